//! The `Hypervisor` object of this node: registered when missing (spec left to others) and
//! its status written at every heartbeat, and soon after its domains change, with server-side
//! apply.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use super::Context;
use super::actions::{self, HostDomains, MarkedDomain};
use super::backoff::whole_seconds;
use super::error::AgentError;
use crate::api::{Hypervisor, HypervisorStatus, condition_types};
use crate::field_manager;
use crate::libvirt::HostInfo;

/// Reason of `Ready=True`.
pub const REASON_REACHABLE: &str = "LibvirtReachable";
/// Reason of `Ready=False` when libvirt does not answer.
pub const REASON_UNREACHABLE: &str = "LibvirtUnreachable";
/// Reason of `Ready=False` while the controller keeps this host fenced.
pub const REASON_FENCED: &str = "Fenced";

/// How long after a domain change the status is written (changes meanwhile join it).
const REPORT_CHANGES_AFTER: Duration = Duration::from_secs(1);

/// What the heartbeat saw.
pub type Observation = Result<(HostInfo, HostDomains), String>;

/// The status to write: fresh host facts when libvirt answered, the last known ones
/// otherwise; the Ready condition keeps its transition time unless its status flips.
///
/// While the controller keeps the host fenced, Ready is False (reason Fenced): a host is never
/// Ready while it may still run a domain of a VM placed elsewhere. The fence itself is the
/// controller's field and never part of what the agent writes.
pub fn build_status(
    uri: &str,
    observation: &Observation,
    previous: Option<&HypervisorStatus>,
    generation: Option<i64>,
    fenced: bool,
    now: Timestamp,
) -> HypervisorStatus {
    let now = whole_seconds(now);
    let mut status = previous.cloned().unwrap_or_default();
    status.fence = None;
    status.drain = None;
    status.libvirt_uri = Some(uri.to_owned());
    status.heartbeat_time = Some(Time(now));
    let (ready, reason, message) = match observation {
        Ok((info, host)) => {
            let domains = &host.marked;
            status.libvirt_version = Some(info.libvirt_version.to_string());
            status.hypervisor = Some(format!("{} {}", info.hypervisor_type, info.hypervisor_version));
            status.cpus = i32::try_from(info.cpus).unwrap_or(i32::MAX);
            status.memory_mib = i64::try_from(info.memory_kib / 1024).unwrap_or(i64::MAX);
            let allocated_kib: u64 = domains.iter().map(|d| d.memory_kib).sum();
            status.allocated_memory_mib = i64::try_from(allocated_kib.div_ceil(1024)).unwrap_or(i64::MAX);
            status.running_vms = domains.iter().filter(|d| d.state.state.is_active()).count() as i32;
            let mut vms: Vec<String> = domains.iter().map(MarkedDomain::owner_key).collect();
            vms.extend(host.assigned.iter().cloned());
            vms.sort();
            vms.dedup();
            status.vms = vms;
            status.vms_observed_time = Some(Time(whole_seconds(host.seen_at)));
            status.started_outside = host.started_outside.clone();
            (
                "True",
                REASON_REACHABLE,
                format!("libvirt {} answers at {uri}", info.libvirt_version),
            )
        }
        Err(message) => ("False", REASON_UNREACHABLE, message.clone()),
    };
    let (ready, reason, message) = if fenced {
        (
            "False",
            REASON_FENCED,
            "the controller fenced this host after it was lost; the agent destroys the domains of VMs placed elsewhere, then the fence is lifted".to_owned(),
        )
    } else {
        (ready, reason, message)
    };
    let previous_ready =
        previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == condition_types::READY));
    let last_transition_time = match previous_ready {
        Some(c) if c.status == ready => c.last_transition_time.clone(),
        _ => Time(now),
    };
    status.conditions.retain(|c| c.type_ != condition_types::READY);
    status.conditions.insert(
        0,
        Condition {
            type_: condition_types::READY.to_owned(),
            status: ready.to_owned(),
            reason: reason.to_owned(),
            message,
            last_transition_time,
            observed_generation: generation,
        },
    );
    status
}

/// Creates the Hypervisor object if it does not exist (without owning any spec field) and
/// returns its generation and current status.
async fn register(
    api: &Api<Hypervisor>,
    node: &str,
) -> Result<(Option<i64>, Option<HypervisorStatus>), AgentError> {
    let context = format!("Hypervisor {node}");
    if let Some(existing) = api
        .get_opt(node)
        .await
        .map_err(|e| AgentError::kube(&context, e))?
    {
        return Ok((existing.metadata.generation, existing.status));
    }
    let object = json!({
        "apiVersion": Hypervisor::api_version(&()),
        "kind": Hypervisor::kind(&()),
        "metadata": { "name": node },
        "spec": {},
    });
    let created = api
        .patch(
            node,
            &PatchParams::apply(field_manager::AGENT),
            &Patch::Apply(&object),
        )
        .await
        .map_err(|e| AgentError::kube(&context, e))?;
    info!(node, "registered the Hypervisor object");
    Ok((created.metadata.generation, created.status))
}

async fn write_status(
    api: &Api<Hypervisor>,
    node: &str,
    status: &HypervisorStatus,
) -> Result<Hypervisor, AgentError> {
    let patch = json!({
        "apiVersion": Hypervisor::api_version(&()),
        "kind": Hypervisor::kind(&()),
        "metadata": { "name": node },
        "status": status,
    });
    let params = PatchParams::apply(field_manager::AGENT).force();
    let written = api
        .patch_status(node, &params, &Patch::Apply(&patch))
        .await
        .map_err(|e| AgentError::kube(format!("Hypervisor {node}: write status"), e))?;
    Ok(written)
}

/// The host's facts and domains, and the VMs the agent's cache assigns here, read together
/// while no domain is being defined, with the time they were read: a VM this report leaves
/// out is one the agent neither holds nor will define, so the controller may hand it to
/// another host once the listing is newer than the agent's last word on the VM. The time is
/// taken here, not when the status is written, so that "newer" is about what was seen.
async fn observe_host(ctx: &Context) -> Observation {
    let _no_define_meanwhile = ctx.assignment_gate.write().await;
    let seen_at = Timestamp::now();
    let mut observation = ctx
        .libvirt
        .run("heartbeat", actions::host_snapshot)
        .await
        .map_err(|e| e.to_string());
    if let Ok((_, host)) = &mut observation {
        host.assigned = ctx.assigned_here();
        host.seen_at = seen_at;
    }
    observation
}

/// How long the last listing stands for one that libvirt has not returned (Ready stays as it
/// was); past it, Ready is False.
const SLOW_LISTING_LIMIT: Duration = Duration::from_secs(30);

/// A listing under way.
type PendingListing<'a> = std::pin::Pin<Box<dyn Future<Output = Observation> + Send + 'a>>;

/// The heartbeat's listings: the one libvirt has not returned yet (its domain queries wait
/// while a domain starts, for seconds on a loaded host), awaited again on the next beat and
/// never started twice, and the last one it returned.
#[derive(Default)]
struct Listing<'a> {
    pending: Option<(PendingListing<'a>, Instant)>,
    last: Option<Observation>,
}

/// What this beat reports: a fresh listing if libvirt returns one within a heartbeat interval,
/// else the last one (with the time it was read) while the wait is short, else why there is
/// none. The heartbeat is written either way: a slow libvirt must never get a healthy host
/// declared lost, nor its agent self-fenced.
async fn this_beat<'a>(ctx: &'a Context, listing: &mut Listing<'a>) -> Observation {
    let (observing, since) = listing
        .pending
        .get_or_insert_with(|| (Box::pin(observe_host(ctx)), Instant::now()));
    let since = *since;
    tokio::select! {
        done = observing.as_mut() => {
            listing.pending = None;
            if done.is_ok() {
                listing.last = Some(done.clone());
            }
            done
        }
        _ = tokio::time::sleep(ctx.config.heartbeat_interval) => match &listing.last {
            Some(last) if since.elapsed() < SLOW_LISTING_LIMIT => last.clone(),
            _ => Err(format!("libvirt has not listed the domains for {:.0?}", since.elapsed())),
        },
    }
}

/// Registers the Hypervisor and writes its status every heartbeat interval until `stop`.
pub(crate) async fn heartbeat_loop(ctx: Arc<Context>, mut stop: watch::Receiver<bool>) {
    let node = ctx.config.node_name.clone();
    let api: Api<Hypervisor> = Api::all(ctx.client.clone());
    let mut registered = false;
    let mut generation = None;
    let mut previous: Option<HypervisorStatus> = None;
    let mut listing = Listing::default();
    loop {
        if !registered {
            match register(&api, &node).await {
                Ok((g, status)) => {
                    registered = true;
                    generation = g;
                    if previous.is_none() {
                        previous = status;
                    }
                }
                Err(e) => warn!(node, "cannot register the Hypervisor: {e}"),
            }
        }
        if registered {
            let observation = this_beat(&ctx, &mut listing).await;
            if let Err(e) = &observation {
                warn!(node, "libvirt does not answer: {e}");
            }
            let mut status = build_status(
                ctx.libvirt.uri(),
                &observation,
                previous.as_ref(),
                generation,
                ctx.fence.fenced_by_controller(),
                Timestamp::now(),
            );
            status.migration_uri = ctx.config.migration_uri();
            match write_status(&api, &node, &status).await {
                Ok(written) => {
                    ctx.stats.hypervisor_status_write();
                    let fenced = written.status.as_ref().is_some_and(|s| s.fence.is_some());
                    if fenced != ctx.fence.fenced_by_controller() {
                        info!(node, fenced, "the controller's fence of this host changed");
                        // Report the new standing at once, not a heartbeat later.
                        ctx.domains_changed.notify_one();
                    }
                    ctx.fence.heartbeat_written(fenced);
                    debug!(node, "heartbeat written");
                    generation = written.metadata.generation;
                    previous = Some(status);
                }
                Err(e) => {
                    warn!(node, "cannot write the Hypervisor status: {e}");
                    // The object may have been deleted: register it again.
                    if let AgentError::Kube {
                        error: kube::Error::Api(s),
                        ..
                    } = &e
                        && s.code == 404
                    {
                        registered = false;
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(ctx.config.heartbeat_interval) => {}
            _ = ctx.domains_changed.notified() => {
                // Placement reads this status: report a change within a moment, in one
                // write for a burst of them.
                let coalesce = REPORT_CHANGES_AFTER.min(ctx.config.heartbeat_interval);
                tokio::select! {
                    _ = tokio::time::sleep(coalesce) => {}
                    _ = stop.changed() => return,
                }
            }
            _ = stop.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain_xml::DomainOwner;
    use crate::libvirt::{DomainState, StateInfo, Version};

    fn info() -> HostInfo {
        HostInfo {
            libvirt_version: Version::from_libvirt(9_000_000),
            hypervisor_type: "TEST".into(),
            hypervisor_version: Version::from_libvirt(2),
            cpus: 8,
            cpu_model: "x86_64".into(),
            cpu_mhz: 2400,
            memory_kib: 16 * 1024 * 1024,
            hostname: "h".into(),
        }
    }

    fn marked(ns: &str, name: &str, state: DomainState, memory_kib: u64) -> MarkedDomain {
        MarkedDomain {
            name: format!("{ns}_{name}"),
            uuid: uuid::Uuid::new_v4(),
            state: StateInfo { state, reason: 1 },
            owner: DomainOwner::new(ns, name, "u"),
            memory_kib,
            started_outside: false,
        }
    }

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).unwrap()
    }

    #[test]
    fn ready_status_counts_vms_and_memory() {
        let obs: Observation = Ok((
            info(),
            HostDomains {
                marked: vec![
                    marked("b", "vm2", DomainState::ShutOff, 512 * 1024),
                    marked("a", "vm1", DomainState::Running, 1024 * 1024 + 1),
                ],
                started_outside: vec![],
                // Assigned here with no domain yet, or with one: listed once either way.
                assigned: vec!["c/vm3".into(), "a/vm1".into()],
                seen_at: t(0),
            },
        ));
        let s = build_status("test:///hv1.xml", &obs, None, Some(1), false, t(0));
        assert_eq!(s.libvirt_uri.as_deref(), Some("test:///hv1.xml"));
        assert_eq!(s.libvirt_version.as_deref(), Some("9.0.0"));
        assert_eq!(s.hypervisor.as_deref(), Some("TEST 0.0.2"));
        assert_eq!((s.cpus, s.memory_mib), (8, 16384));
        assert_eq!(s.allocated_memory_mib, 1537);
        assert_eq!(s.running_vms, 1);
        assert_eq!(s.vms, ["a/vm1", "b/vm2", "c/vm3"]);
        assert!(s.started_outside.is_empty());
        assert_eq!(s.heartbeat_time, Some(Time(t(0))));
        let ready = &s.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", REASON_REACHABLE)
        );
        assert_eq!(ready.observed_generation, Some(1));
        assert_eq!(ready.last_transition_time, Time(t(0)));
    }

    #[test]
    fn domains_started_outside_the_agent_are_reported_by_name() {
        let obs: Observation = Ok((
            info(),
            HostDomains {
                marked: vec![marked("a", "ours", DomainState::Running, 1024)],
                started_outside: vec!["VM1".into(), "a_pcmk".into()],
                assigned: vec![],
                seen_at: t(0),
            },
        ));
        let s = build_status("test:///hv1.xml", &obs, None, Some(1), false, t(0));
        assert_eq!(s.vms, ["a/ours"]);
        assert_eq!(s.started_outside, ["VM1", "a_pcmk"]);
        let gone: Observation = Ok((info(), HostDomains::default()));
        let s = build_status("test:///hv1.xml", &gone, Some(&s), Some(1), false, t(1));
        assert!(s.started_outside.is_empty(), "{s:?}");
    }

    #[test]
    fn transition_time_changes_only_on_flips() {
        let listing = HostDomains {
            seen_at: t(0),
            ..HostDomains::default()
        };
        let ok: Observation = Ok((info(), listing));
        let down: Observation = Err("libvirt connect on test:///x: no such file".into());
        let s1 = build_status("u", &ok, None, Some(1), false, t(0));
        let s2 = build_status("u", &ok, Some(&s1), Some(1), false, t(10));
        assert_eq!(s2.conditions[0].last_transition_time, Time(t(0)));
        assert_eq!(s2.heartbeat_time, Some(Time(t(10))));
        let s3 = build_status("u", &down, Some(&s2), Some(1), false, t(20));
        let ready = &s3.conditions[0];
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", REASON_UNREACHABLE)
        );
        assert_eq!(ready.message, "libvirt connect on test:///x: no such file");
        assert_eq!(ready.last_transition_time, Time(t(20)));
        assert_eq!(s3.cpus, 8, "last known capacity is kept");
        // The listing keeps the time it was read at: a heartbeat without one proves nothing
        // about the VMs it leaves out.
        let listed_at = |s: &HypervisorStatus| s.vms_observed_time.clone();
        assert_eq!(
            listed_at(&s2),
            Some(Time(t(0))),
            "the listing of `ok` was read at t(0)"
        );
        assert_eq!(listed_at(&s3), listed_at(&s2));
        assert_eq!(s3.heartbeat_time, Some(Time(t(20))));
        assert_eq!(s3.conditions.len(), 1);
        let s4 = build_status("u", &down, Some(&s3), Some(2), false, t(30));
        assert_eq!(s4.conditions[0].last_transition_time, Time(t(20)));
        assert_eq!(s4.conditions[0].observed_generation, Some(2));
    }

    #[test]
    fn a_fenced_host_is_not_ready_and_never_writes_the_fence() {
        let ok: Observation = Ok((info(), HostDomains::default()));
        let mut previous = build_status("u", &ok, None, Some(1), false, t(0));
        previous.fence = Some(crate::api::FenceStatus::default());
        let s = build_status("u", &ok, Some(&previous), Some(1), true, t(10));
        assert_eq!(
            (s.conditions[0].status.as_str(), s.conditions[0].reason.as_str()),
            ("False", REASON_FENCED)
        );
        assert_eq!(s.fence, None, "the fence is the controller's field");
        let s = build_status("u", &ok, Some(&s), Some(1), false, t(20));
        assert_eq!(s.conditions[0].status, "True");
    }

    #[test]
    fn unreachable_from_the_start() {
        let down: Observation = Err("boom".into());
        let s = build_status("u", &down, None, None, false, t(0));
        assert_eq!(s.conditions[0].status, "False");
        assert_eq!(s.cpus, 0);
        assert!(s.libvirt_version.is_none());
    }
}
