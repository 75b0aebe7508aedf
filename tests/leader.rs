//! Leader election on the real kube-apiserver of the test bed: two contenders on one Lease with
//! short lease durations (3 s, renewed 1 s before expiry).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams};
use seapath_operator::leader::{LeaderConfig, LeaderElector, LeaderExit};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

const NAMESPACE: &str = "default";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RENEW_BEFORE: Duration = Duration::from_secs(1);

fn unique_lease(prefix: &str) -> String {
    format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

/// Counts the works running at once, over all contenders of one test.
#[derive(Clone, Default)]
struct Running {
    now: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
    starts: Arc<AtomicUsize>,
}

struct RunningGuard(Running);

impl Running {
    fn enter(&self) -> RunningGuard {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        self.starts.fetch_add(1, Ordering::SeqCst);
        RunningGuard(self.clone())
    }

    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

struct Contender {
    identity: String,
    leading: watch::Receiver<bool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<LeaderExit, seapath_operator::leader::LeaderError>>,
    /// Set when this contender's work saw its stop signal (graceful stop).
    stopped_gracefully: Arc<AtomicBool>,
}

impl Contender {
    fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }
}

fn contender(client: &kube::Client, lease: &str, name: &str, running: &Running) -> Contender {
    let identity = format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    let config =
        LeaderConfig::new(NAMESPACE, lease, identity.clone()).with_lease_timing(LEASE_DURATION, RENEW_BEFORE);
    let elector = LeaderElector::new(client.clone(), config).expect("valid config");
    let leading = elector.subscribe();
    let (stop, stopped) = oneshot::channel::<()>();
    let stopped_gracefully = Arc::new(AtomicBool::new(false));
    let running = running.clone();
    let graceful = stopped_gracefully.clone();
    let task = tokio::spawn(elector.run(
        move |stop_signal| {
            let running = running.clone();
            let graceful = graceful.clone();
            async move {
                let _guard = running.enter();
                stop_signal.stopped().await;
                graceful.store(true, Ordering::SeqCst);
            }
        },
        async move {
            let _ = stopped.await;
        },
    ));
    Contender {
        identity,
        leading,
        stop: Some(stop),
        task,
        stopped_gracefully,
    }
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases
        .get(name)
        .await
        .expect("reading the Lease")
        .spec
        .and_then(|spec| spec.holder_identity)
}

/// Waits until `check` holds, polling every 100 ms; panics with `what` after `timeout`.
async fn wait_until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut check: F) -> Duration {
    let start = Instant::now();
    while !check() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    start.elapsed()
}

/// Checks for `duration` that exactly one of `contenders` leads, runs its work, and is the
/// Lease's holder.
async fn assert_single_leader(
    leases: &Api<Lease>,
    lease: &str,
    contenders: &[&Contender],
    running: &Running,
) {
    let start = Instant::now();
    while start.elapsed() < 2 * LEASE_DURATION {
        let leaders: Vec<_> = contenders.iter().filter(|c| c.is_leading()).collect();
        assert_eq!(leaders.len(), 1, "exactly one contender must lead");
        assert_eq!(running.now(), 1, "exactly one work must run");
        assert_eq!(
            holder(leases, lease).await.as_deref(),
            Some(leaders[0].identity.as_str())
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn delete_lease(leases: &Api<Lease>, name: &str) {
    let _ = leases.delete(name, &DeleteParams::default()).await;
}

#[tokio::test]
async fn one_leader_and_takeover_after_shutdown() {
    seapath_operator::telemetry::init(seapath_operator::telemetry::LogFormat::Pretty);
    let client = common::admin_client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let lease = unique_lease("leader-shutdown");
    let running = Running::default();

    let mut a = contender(&client, &lease, "a", &running);
    let mut b = contender(&client, &lease, "b", &running);

    wait_until(4 * LEASE_DURATION, "a contender leads", || {
        a.is_leading() || b.is_leading()
    })
    .await;
    assert_single_leader(&leases, &lease, &[&a, &b], &running).await;
    assert_eq!(running.max.load(Ordering::SeqCst), 1, "never two works at once");

    let (leader, follower) = if a.is_leading() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    leader.stop.take().unwrap().send(()).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), &mut leader.task)
        .await
        .expect("the leader stops in time")
        .expect("leader task")
        .expect("leader election result");
    assert_eq!(exit, LeaderExit::Shutdown);
    assert!(
        leader.stopped_gracefully.load(Ordering::SeqCst),
        "the work got its stop signal"
    );
    assert!(!leader.is_leading());

    let took = wait_until(3 * LEASE_DURATION, "the follower takes over", || {
        follower.is_leading()
    })
    .await;
    println!("takeover after a graceful shutdown: {took:?}");
    assert_eq!(
        holder(&leases, &lease).await.as_deref(),
        Some(follower.identity.as_str())
    );
    assert_single_leader(&leases, &lease, &[&*follower], &running).await;
    assert_eq!(running.max.load(Ordering::SeqCst), 1, "never two works at once");
    assert_eq!(running.starts.load(Ordering::SeqCst), 2);

    follower.stop.take().unwrap().send(()).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), &mut follower.task)
        .await
        .expect("the second leader stops in time")
        .unwrap()
        .unwrap();
    assert_eq!(exit, LeaderExit::Shutdown);
    assert_eq!(running.now(), 0);
    assert_eq!(
        holder(&leases, &lease).await,
        None,
        "the lease is released on shutdown"
    );
    delete_lease(&leases, &lease).await;
}

#[tokio::test]
async fn crashed_leader_is_replaced_after_its_lease_expires() {
    seapath_operator::telemetry::init(seapath_operator::telemetry::LogFormat::Pretty);
    let client = common::admin_client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let lease = unique_lease("leader-crash");
    let running = Running::default();

    let mut a = contender(&client, &lease, "a", &running);
    let mut b = contender(&client, &lease, "b", &running);
    wait_until(4 * LEASE_DURATION, "a contender leads", || {
        a.is_leading() || b.is_leading()
    })
    .await;
    assert_single_leader(&leases, &lease, &[&a, &b], &running).await;

    let (leader, follower) = if a.is_leading() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    // A crash: the elector disappears without releasing the lease; its work goes with it.
    leader.task.abort();
    let _ = (&mut leader.task).await;
    wait_until(
        Duration::from_secs(2),
        "the crashed leader's work is gone",
        || running.now() == 0,
    )
    .await;
    assert_eq!(
        holder(&leases, &lease).await.as_deref(),
        Some(leader.identity.as_str())
    );

    let took = wait_until(3 * LEASE_DURATION, "the follower takes over", || {
        follower.is_leading()
    })
    .await;
    println!("takeover after a crash: {took:?}");
    assert_eq!(
        holder(&leases, &lease).await.as_deref(),
        Some(follower.identity.as_str())
    );
    assert_single_leader(&leases, &lease, &[&*follower], &running).await;
    assert_eq!(running.max.load(Ordering::SeqCst), 1, "never two works at once");

    follower.stop.take().unwrap().send(()).unwrap();
    (&mut follower.task).await.unwrap().unwrap();
    delete_lease(&leases, &lease).await;
}

#[tokio::test]
async fn deleted_lease_is_recreated_and_reacquired() {
    seapath_operator::telemetry::init(seapath_operator::telemetry::LogFormat::Pretty);
    let client = common::admin_client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let lease = unique_lease("leader-deleted");
    let running = Running::default();

    let mut a = contender(&client, &lease, "a", &running);
    wait_until(4 * LEASE_DURATION, "the only contender leads", || a.is_leading()).await;
    assert_eq!(
        holder(&leases, &lease).await.as_deref(),
        Some(a.identity.as_str())
    );

    delete_lease(&leases, &lease).await;
    // The next renewal fails: the work stops, the Lease is recreated and acquired again.
    wait_until(4 * LEASE_DURATION, "the Lease is held again", || {
        running.starts.load(Ordering::SeqCst) >= 2 && a.is_leading()
    })
    .await;
    assert_eq!(
        holder(&leases, &lease).await.as_deref(),
        Some(a.identity.as_str())
    );
    assert_eq!(running.max.load(Ordering::SeqCst), 1);

    a.stop.take().unwrap().send(()).unwrap();
    a.task.await.unwrap().unwrap();
    delete_lease(&leases, &lease).await;
}

#[tokio::test]
async fn usurped_lease_stops_the_work_until_it_is_free_again() {
    seapath_operator::telemetry::init(seapath_operator::telemetry::LogFormat::Pretty);
    let client = common::admin_client().await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let lease = unique_lease("leader-usurped");
    let running = Running::default();

    let mut a = contender(&client, &lease, "a", &running);
    wait_until(4 * LEASE_DURATION, "the only contender leads", || a.is_leading()).await;

    // Another holder (not using our elector) writes itself into the Lease and renews it every
    // second: the leader must notice at its next renewal and abort its work.
    let usurper = {
        let leases = leases.clone();
        let lease = lease.clone();
        tokio::spawn(async move {
            loop {
                let patch = serde_json::json!({
                    "spec": {
                        "holderIdentity": "usurper",
                        "renewTime": MicroTime(Timestamp::now()),
                        "leaseDurationSeconds": LEASE_DURATION.as_secs(),
                    }
                });
                leases
                    .patch(&lease, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("usurping the Lease");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    let took = wait_until(2 * LEASE_DURATION, "the leader steps down", || {
        !a.is_leading() && running.now() == 0
    })
    .await;
    println!("stepped down after {took:?}");
    assert!(
        !a.stopped_gracefully.load(Ordering::SeqCst),
        "lost leadership aborts, no grace"
    );

    // While the other holder renews, no take-back.
    let start = Instant::now();
    while start.elapsed() < 2 * LEASE_DURATION {
        assert!(!a.is_leading());
        assert_eq!(running.now(), 0);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("usurper"));

    // The other holder dies: the contender leads again after the lease expires.
    usurper.abort();
    let _ = usurper.await;
    let took = wait_until(3 * LEASE_DURATION, "the contender leads again", || {
        a.is_leading() && running.now() == 1
    })
    .await;
    println!("re-acquired after {took:?}");
    assert_eq!(
        holder(&leases, &lease).await.as_deref(),
        Some(a.identity.as_str())
    );
    assert_eq!(running.starts.load(Ordering::SeqCst), 2);

    a.stop.take().unwrap().send(()).unwrap();
    let exit = (&mut a.task).await.unwrap().unwrap();
    assert_eq!(exit, LeaderExit::Shutdown);
    delete_lease(&leases, &lease).await;
}
