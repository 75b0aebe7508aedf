//! Self-fencing: an agent that cannot renew its heartbeat for longer than its deadline destroys
//! its domains itself, before the controller (whose grace is longer) fences the host and starts
//! the VMs elsewhere, so two copies never run, not even for a moment (as SBD and Self Node
//! Remediation do). Until the heartbeat is renewed again, and while the controller keeps the
//! host fenced, the agent starts no domain.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::Context;
use super::actions;

/// How often the deadline is checked.
const TICK: Duration = Duration::from_millis(250);

/// What the agent knows of its own standing: when its heartbeat last reached the API server,
/// whether it destroyed its domains for lack of one, and whether the controller fenced it.
pub(crate) struct FenceWatch {
    last_heartbeat: Mutex<Instant>,
    self_fenced: AtomicBool,
    fenced_by_controller: AtomicBool,
}

impl Default for FenceWatch {
    fn default() -> Self {
        FenceWatch {
            last_heartbeat: Mutex::new(Instant::now()),
            self_fenced: AtomicBool::new(false),
            fenced_by_controller: AtomicBool::new(false),
        }
    }
}

impl FenceWatch {
    /// A heartbeat reached the API server; the Hypervisor it returned says whether the
    /// controller keeps this host fenced.
    pub(crate) fn heartbeat_written(&self, fenced_by_controller: bool) {
        *self.last_heartbeat.lock().expect("fence watch") = Instant::now();
        self.fenced_by_controller
            .store(fenced_by_controller, Ordering::SeqCst);
        if self.self_fenced.swap(false, Ordering::SeqCst) {
            info!("heartbeat renewed: domains may start again");
        }
    }

    pub(crate) fn fenced_by_controller(&self) -> bool {
        self.fenced_by_controller.load(Ordering::SeqCst)
    }

    /// Whether a domain may be started now.
    pub(crate) fn blocks_starts(&self) -> bool {
        self.self_fenced.load(Ordering::SeqCst) || self.fenced_by_controller()
    }

    fn overdue(&self, deadline: Duration) -> Option<Duration> {
        let silent = self.last_heartbeat.lock().expect("fence watch").elapsed();
        (silent > deadline).then_some(silent)
    }
}

/// Destroys every domain of this host that carries the operator's marker once the heartbeat
/// is overdue by `self_fence_after` (zero: never), and while the controller keeps the host
/// fenced: the fence blocklisted those guests' Ceph clients, so what still runs here is a
/// guest that can no longer write its disk; it starts again, here or elsewhere, once the fence
/// is lifted.
pub(crate) async fn self_fence_loop(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let deadline = ctx.config.self_fence_after;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = stop.changed() => return,
        }
        let overdue = (!deadline.is_zero())
            .then(|| ctx.fence.overdue(deadline))
            .flatten();
        if overdue.is_none() && !ctx.fence.fenced_by_controller() {
            continue;
        }
        if let Some(silent) = overdue {
            // Set before acting, so no reconcile starts a domain meanwhile.
            let first = !ctx.fence.self_fenced.swap(true, Ordering::SeqCst);
            if first {
                error!(
                    node = %ctx.config.node_name,
                    silent_s = silent.as_secs_f64(),
                    "the heartbeat could not be renewed within the self-fence deadline: destroying this host's domains before the controller starts them elsewhere"
                );
            }
        }
        match destroy_all(&ctx).await {
            Ok(0) => {}
            Ok(n) => warn!(destroyed = n, "self-fenced: domains destroyed"),
            Err(e) => error!("self-fencing could not destroy every domain: {e}"),
        }
    }
}

async fn destroy_all(ctx: &Context) -> Result<usize, super::AgentError> {
    let marked = ctx.libvirt.run("self-fence", actions::list_marked).await?;
    let mut destroyed = 0;
    for domain in marked.into_iter().filter(|d| d.state.state.is_active()) {
        let _guard = ctx.locks.lock(&domain.name).await;
        let (stats, name) = (ctx.stats.clone(), domain.name.clone());
        ctx.libvirt
            .run(format!("self-fence domain '{name}'"), move |hv| {
                actions::destroy(hv, &stats, "self-fence", &name)
            })
            .await?;
        ctx.domains_changed.notify_one();
        destroyed += 1;
    }
    Ok(destroyed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_are_blocked_while_self_fenced_or_fenced_by_the_controller() {
        let watch = FenceWatch::default();
        assert!(!watch.blocks_starts());
        assert!(watch.overdue(Duration::from_secs(5)).is_none());
        watch.self_fenced.store(true, Ordering::SeqCst);
        assert!(watch.blocks_starts());
        watch.heartbeat_written(false);
        assert!(!watch.blocks_starts(), "a renewed heartbeat lifts the self-fence");
        watch.heartbeat_written(true);
        assert!(
            watch.blocks_starts(),
            "the controller's fence holds until it is lifted"
        );
        watch.heartbeat_written(false);
        assert!(!watch.blocks_starts());
        std::thread::sleep(Duration::from_millis(20));
        assert!(watch.overdue(Duration::from_millis(10)).is_some());
    }
}
