//! Lease-based leader election (`coordination.k8s.io/v1` Lease), built on `kube-lease-manager`.
//!
//! Several replicas of the controller run [`run_as_leader`] (or [`LeaderElector::run`]) on the
//! same Lease; one of them holds it and runs the work (the kube-runtime Controllers), the
//! others wait. The work is started in its own task when the lease is acquired and aborted as
//! soon as the lease is lost; the elector then competes again and restarts the work (with a
//! fresh [`StopSignal`]) when it re-acquires the lease.
//!
//! ```no_run
//! # async fn doc(client: kube::Client) -> Result<(), seapath_operator::leader::LeaderError> {
//! use seapath_operator::leader::{LeaderConfig, run_as_leader};
//! let config = LeaderConfig::new("seapath-system", "seapath-operator", LeaderConfig::default_identity());
//! run_as_leader(client, config, |stop| async move {
//!     // Controller::new(..).graceful_shutdown_on(stop.stopped()).run(..).for_each(..).await
//!     stop.stopped().await;
//! }, async { let _ = tokio::signal::ctrl_c().await; }).await?;
//! # Ok(()) }
//! ```
//!
//! Safety against two leaders working at once:
//! - every Lease request (made through a dedicated client) is bounded by
//!   [`LeaderConfig::request_timeout`], so a renewal that hangs fails at the latest
//!   `2 × request_timeout` after it started, i.e. before the lease expires, and the work is
//!   aborted then;
//! - any error while leading (failed renewal, API server unreachable) is treated as a loss of
//!   leadership: the work is aborted, the lease released, and the election starts over;
//! - when another holder is seen, the work is aborted at once (no grace period).
//!
//! A remaining assumption, inherent to Leases: the clocks of the replicas differ by less than
//! [`LeaderConfig::renew_before`] / 2.

use std::any::Any;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Settings of the election.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease; all contenders use the same one.
    pub lease_name: String,
    /// This contender's identity, written to `spec.holderIdentity`; unique among contenders
    /// (see [`LeaderConfig::default_identity`]).
    pub identity: String,
    /// How long a lease is valid after its last renewal (`spec.leaseDurationSeconds`). Whole
    /// seconds, at least 2 s. A dead leader is replaced after at most this long.
    pub lease_duration: Duration,
    /// The leader renews its lease this long before it expires. Whole seconds, at least 1 s and
    /// less than `lease_duration`.
    pub renew_before: Duration,
    /// Timeout of each request to the API server about the Lease; at most `renew_before / 2`
    /// (see the module documentation).
    pub request_timeout: Duration,
    /// On shutdown, how long the work may take to finish after its [`StopSignal`] fired before
    /// it is aborted. Leadership is kept (renewed) meanwhile. Loss of leadership aborts the
    /// work immediately, whatever this value.
    pub stop_grace: Duration,
}

impl LeaderConfig {
    /// Defaults: lease of 15 s renewed 5 s before expiry, 1.25 s per request, 10 s to stop.
    pub fn new(
        namespace: impl Into<String>,
        lease_name: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        let renew_before = Duration::from_secs(5);
        Self {
            namespace: namespace.into(),
            lease_name: lease_name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_before,
            request_timeout: renew_before / 4,
            stop_grace: Duration::from_secs(10),
        }
    }

    /// Sets `lease_duration` and `renew_before`, and `request_timeout` to `renew_before / 4`.
    pub fn with_lease_timing(mut self, lease_duration: Duration, renew_before: Duration) -> Self {
        self.lease_duration = lease_duration;
        self.renew_before = renew_before;
        self.request_timeout = renew_before / 4;
        self
    }

    /// `$POD_NAME` (or the host name) followed by `_` and 8 random hex digits, so that two
    /// processes never share an identity, even on one host or across a restart.
    pub fn default_identity() -> String {
        let base = std::env::var("POD_NAME")
            .ok()
            .filter(|name| !name.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok().filter(|name| !name.is_empty()))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|name| name.trim().to_owned())
                    .filter(|name| !name.is_empty())
            })
            .unwrap_or_else(|| "seapath-operator".to_owned());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{base}_{}", &suffix[..8])
    }

    /// Checks the constraints documented on the fields.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let invalid = |reason: String| Err(LeaderError::InvalidConfig(reason));
        if self.namespace.is_empty() || self.lease_name.is_empty() || self.identity.is_empty() {
            return invalid("namespace, lease_name and identity must not be empty".to_owned());
        }
        for (name, value) in [
            ("lease_duration", self.lease_duration),
            ("renew_before", self.renew_before),
        ] {
            if value.subsec_nanos() != 0 {
                return invalid(format!("{name} must be whole seconds, not {value:?}"));
            }
        }
        if self.lease_duration < Duration::from_secs(2) {
            return invalid(format!(
                "lease_duration must be at least 2s, not {:?}",
                self.lease_duration
            ));
        }
        if self.renew_before < Duration::from_secs(1) || self.renew_before >= self.lease_duration {
            return invalid(format!(
                "renew_before must be at least 1s and less than lease_duration ({:?}), not {:?}",
                self.lease_duration, self.renew_before
            ));
        }
        if self.request_timeout.is_zero() || self.request_timeout > self.renew_before / 2 {
            return invalid(format!(
                "request_timeout must be positive and at most renew_before / 2 ({:?}), not {:?}",
                self.renew_before / 2,
                self.request_timeout
            ));
        }
        Ok(())
    }
}

/// Errors that end the election.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    /// The [`LeaderConfig`] breaks a constraint.
    #[error("invalid leader election config: {0}")]
    InvalidConfig(String),
    /// The API server refused a Lease request for a reason that retrying cannot fix (for
    /// example 403 Forbidden: missing RBAC on `coordination.k8s.io` leases).
    #[error("lease {namespace}/{name}: {source}")]
    Lease {
        namespace: String,
        name: String,
        #[source]
        source: LeaseManagerError,
    },
    /// The work panicked; the lease was released.
    #[error("the leader's work panicked: {0}")]
    WorkPanicked(String),
}

/// Why [`LeaderElector::run`] returned normally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaderExit {
    /// The shutdown future completed; the work (if running) was stopped and the lease released.
    Shutdown,
    /// The work returned on its own while leading; the lease was released.
    WorkFinished,
}

/// Tells the work to stop gracefully (on shutdown). Cheap to clone.
#[derive(Clone, Debug)]
pub struct StopSignal {
    rx: watch::Receiver<bool>,
}

impl StopSignal {
    /// Whether the stop was requested.
    pub fn is_stopping(&self) -> bool {
        *self.rx.borrow()
    }

    /// Completes when the stop is requested; usable as
    /// `Controller::graceful_shutdown_on(stop.stopped())`.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.rx.clone();
        async move {
            // An error means the elector is gone: stop as well.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// A leader elector. Use [`LeaderElector::subscribe`] to follow the leadership (for example to
/// export it or log it), then [`LeaderElector::run`].
pub struct LeaderElector {
    client: Client,
    config: LeaderConfig,
    leading: watch::Sender<bool>,
}

/// How the leader phase ended.
enum LeaderPhaseEnd {
    /// Lost the lease or failed to renew it; compete again.
    Lost { release: bool },
    /// Return this from `run`.
    Exit(Result<LeaderExit, LeaderError>),
}

impl LeaderElector {
    /// Checks the config; nothing is sent to the API server before [`LeaderElector::run`].
    pub fn new(client: Client, config: LeaderConfig) -> Result<Self, LeaderError> {
        config.validate()?;
        let (leading, _) = watch::channel(false);
        Ok(Self {
            client,
            config,
            leading,
        })
    }

    /// `true` while this contender holds the lease and runs the work.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.leading.subscribe()
    }

    pub fn config(&self) -> &LeaderConfig {
        &self.config
    }

    /// Competes for the lease until `shutdown` completes, running `work` while leading.
    ///
    /// `work` is called each time the lease is acquired, and its future spawned on a new task.
    /// The future is aborted when the lease is lost. On shutdown its [`StopSignal`] fires and it
    /// gets [`LeaderConfig::stop_grace`] to return before it is aborted; then the lease is
    /// released so that another contender takes over at once. If the future returns on its
    /// own, the lease is released and `run` returns [`LeaderExit::WorkFinished`].
    ///
    /// Transient API errors are retried (with back-off); errors that retrying cannot fix end
    /// the election with [`LeaderError::Lease`].
    /// Says, once per wait, whom this replica waits for: a new controller is otherwise silent
    /// until the Lease of a killed one expires, and VMs created meanwhile show no status.
    async fn say_who_holds_it(&self, client: &Client) {
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client.clone(), &self.config.namespace);
        let holder = match leases.get_opt(&self.config.lease_name).await {
            Ok(lease) => lease
                .and_then(|l| l.spec)
                .and_then(|spec| spec.holder_identity)
                .filter(|holder| !holder.is_empty() && *holder != self.config.identity),
            Err(err) => {
                tracing::debug!(error = %err, "cannot read the lease holder");
                None
            }
        };
        if let Some(holder) = holder {
            tracing::info!(
                %holder,
                lease_duration = ?self.config.lease_duration,
                "standing by: another replica holds the lease; this one takes over when it stops renewing it (VMs get no status meanwhile)"
            );
        }
    }

    pub async fn run<F, Fut>(
        self,
        mut work: F,
        shutdown: impl Future<Output = ()>,
    ) -> Result<LeaderExit, LeaderError>
    where
        F: FnMut(StopSignal) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let client = with_request_timeout(self.client.clone(), self.config.request_timeout);
        let mut shutdown = pin!(shutdown);
        let mut backoff = Backoff::new(Duration::from_millis(500), self.config.lease_duration);
        tracing::info!(
            namespace = %self.config.namespace,
            lease = %self.config.lease_name,
            identity = %self.config.identity,
            "starting leader election"
        );

        loop {
            // (Re)build the manager: it creates the Lease if missing, and starts with a clean
            // state (not leader) after an error.
            let manager = tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(LeaderExit::Shutdown),
                built = self.build_manager(client.clone()) => built,
            };
            let manager = match manager {
                Ok(manager) => manager,
                Err(err) => {
                    let err = self.classify(err)?;
                    tracing::warn!(error = %err, "cannot set up the lease, retrying");
                    if !sleep_or_shutdown(backoff.next(), shutdown.as_mut()).await {
                        return Ok(LeaderExit::Shutdown);
                    }
                    continue;
                }
            };

            // Follower: wait for the lease.
            self.say_who_holds_it(&client).await;
            loop {
                let changed = tokio::select! {
                    biased;
                    _ = &mut shutdown => {
                        self.release(&manager).await;
                        return Ok(LeaderExit::Shutdown);
                    }
                    changed = manager.changed() => changed,
                };
                match changed {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(err) => {
                        let err = self.classify(err)?;
                        tracing::warn!(error = %err, "leader election failed, retrying");
                        if !sleep_or_shutdown(backoff.next(), shutdown.as_mut()).await {
                            return Ok(LeaderExit::Shutdown);
                        }
                        break; // rebuild the manager
                    }
                }
                backoff.reset();

                match self.lead(&manager, &mut work, shutdown.as_mut()).await {
                    LeaderPhaseEnd::Exit(result) => {
                        self.leading.send_replace(false);
                        self.release(&manager).await;
                        return result;
                    }
                    LeaderPhaseEnd::Lost { release } => {
                        self.leading.send_replace(false);
                        if release {
                            if !self
                                .release_until_done(&manager, &mut backoff, shutdown.as_mut())
                                .await?
                            {
                                return Ok(LeaderExit::Shutdown);
                            }
                            break; // rebuild the manager: its state is stale
                        }
                    }
                }
            }
        }
    }

    /// Runs the work while holding the lease.
    async fn lead<F, Fut>(
        &self,
        manager: &LeaseManager,
        work: &mut F,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> LeaderPhaseEnd
    where
        F: FnMut(StopSignal) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        tracing::info!(identity = %self.config.identity, "acquired leadership, starting work");
        self.leading.send_replace(true);
        let (stop_tx, stop_rx) = watch::channel(false);
        // Aborted if `run` itself is dropped: the work never outlives the elector.
        let mut task = WorkTask(tokio::spawn(work(StopSignal { rx: stop_rx })));

        loop {
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                joined = &mut task.0 => {
                    tracing::info!("leader work returned, releasing the lease");
                    return LeaderPhaseEnd::Exit(work_result(joined).map(|()| LeaderExit::WorkFinished));
                }
                changed = manager.changed() => match changed {
                    Ok(true) => continue,
                    Ok(false) => {
                        tracing::warn!("lost leadership to another holder, aborting work");
                        abort(task).await;
                        return LeaderPhaseEnd::Lost { release: false };
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot renew the lease, aborting work");
                        abort(task).await;
                        return match self.classify(err) {
                            Ok(_) => LeaderPhaseEnd::Lost { release: true },
                            Err(fatal) => LeaderPhaseEnd::Exit(Err(fatal)),
                        };
                    }
                },
            }
        }

        // Shutdown: ask the work to stop, keep renewing the lease meanwhile.
        tracing::info!(grace = ?self.config.stop_grace, "shutting down, stopping the leader work");
        stop_tx.send_replace(true);
        let mut deadline = pin!(tokio::time::sleep(self.config.stop_grace));
        loop {
            tokio::select! {
                biased;
                joined = &mut task.0 => {
                    return LeaderPhaseEnd::Exit(work_result(joined).map(|()| LeaderExit::Shutdown));
                }
                _ = &mut deadline => {
                    tracing::warn!("leader work did not stop in time, aborting it");
                    break;
                }
                changed = manager.changed() => match changed {
                    Ok(true) => continue,
                    Ok(false) => {
                        tracing::warn!("lost leadership while stopping, aborting work");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot renew the lease while stopping, aborting work");
                        break;
                    }
                },
            }
        }
        abort(task).await;
        LeaderPhaseEnd::Exit(Ok(LeaderExit::Shutdown))
    }

    async fn build_manager(&self, client: Client) -> Result<LeaseManager, LeaseManagerError> {
        LeaseManagerBuilder::new(client, &self.config.lease_name)
            .with_namespace(&self.config.namespace)
            .with_identity(&self.config.identity)
            .with_duration(self.config.lease_duration.as_secs())
            .with_grace(self.config.renew_before.as_secs())
            .build()
            .await
    }

    /// Best-effort release on exit: a failure only delays the next leader by one lease.
    async fn release(&self, manager: &LeaseManager) {
        match manager.release().await {
            Ok(()) => tracing::info!(identity = %self.config.identity, "released the lease"),
            Err(err) if is_not_found(&err) => {}
            Err(err) => tracing::warn!(error = %err, "cannot release the lease; it will expire"),
        }
    }

    /// After a failed renewal: release the lease before competing again, so that a manager
    /// whose state is stale never keeps a lease without running the work. Returns `Ok(false)`
    /// on shutdown.
    async fn release_until_done(
        &self,
        manager: &LeaseManager,
        backoff: &mut Backoff,
        mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
    ) -> Result<bool, LeaderError> {
        loop {
            let released = tokio::select! {
                biased;
                _ = &mut shutdown => return Ok(false),
                released = manager.release() => released,
            };
            match released {
                Ok(()) => return Ok(true),
                Err(err) if is_not_found(&err) => return Ok(true),
                Err(err) => {
                    let err = self.classify(err)?;
                    tracing::warn!(error = %err, "cannot release the lease, retrying");
                    if !sleep_or_shutdown(backoff.next(), shutdown.as_mut()).await {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// `Ok(err)` for errors worth retrying, `Err` for the others.
    fn classify(&self, err: LeaseManagerError) -> Result<LeaseManagerError, LeaderError> {
        let permanent = match &err {
            LeaseManagerError::KubeError(kube::Error::Api(status)) => {
                (400..500).contains(&status.code) && !matches!(status.code, 404 | 408 | 409 | 429)
            }
            _ => false,
        };
        if permanent {
            Err(LeaderError::Lease {
                namespace: self.config.namespace.clone(),
                name: self.config.lease_name.clone(),
                source: err,
            })
        } else {
            Ok(err)
        }
    }
}

/// Runs `work` while this process holds the lease; see [`LeaderElector::run`].
pub async fn run_as_leader<F, Fut>(
    client: Client,
    config: LeaderConfig,
    work: F,
    shutdown: impl Future<Output = ()>,
) -> Result<LeaderExit, LeaderError>
where
    F: FnMut(StopSignal) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    LeaderElector::new(client, config)?.run(work, shutdown).await
}

/// The spawned work; aborted when dropped.
struct WorkTask(JoinHandle<()>);

impl Drop for WorkTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Lease does not exist (any more): nothing to release.
fn is_not_found(err: &LeaseManagerError) -> bool {
    match err {
        LeaseManagerError::NonexistentLease(_) => true,
        LeaseManagerError::KubeError(kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}

async fn abort(mut task: WorkTask) {
    task.0.abort();
    // Wait until the task is really gone (dropped at its next await point).
    if let Err(err) = (&mut task.0).await
        && err.is_panic()
    {
        tracing::error!(panic = %panic_message(err.into_panic()), "leader work panicked");
    }
}

fn work_result(joined: Result<(), tokio::task::JoinError>) -> Result<(), LeaderError> {
    match joined {
        Ok(()) => Ok(()),
        Err(err) if err.is_panic() => Err(LeaderError::WorkPanicked(panic_message(err.into_panic()))),
        Err(err) => Err(LeaderError::WorkPanicked(err.to_string())),
    }
}

fn panic_message(payload: Box<dyn Any + Send>) -> String {
    if let Some(message) = payload.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = payload.downcast_ref::<String>() {
        message.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Sleeps, unless shutdown comes first; `false` on shutdown.
async fn sleep_or_shutdown(
    duration: Duration,
    shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> bool {
    tokio::select! {
        biased;
        _ = shutdown => false,
        _ = tokio::time::sleep(duration) => true,
    }
}

struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            current: min,
        }
    }

    fn next(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.current = self.min;
    }
}

/// A request to the API server that took longer than [`LeaderConfig::request_timeout`].
#[derive(Debug, thiserror::Error)]
#[error("request to the API server timed out after {0:?}")]
pub struct RequestTimeout(pub Duration);

/// A client whose every request (including reading the response body) fails with
/// [`RequestTimeout`] after `timeout`. Not for watches (their bodies are read to the end).
pub fn with_request_timeout(client: Client, timeout: Duration) -> Client {
    let namespace = client.default_namespace().to_owned();
    let service = tower::service_fn(move |request: http::Request<kube::client::Body>| {
        let client = client.clone();
        async move {
            let exchange = async {
                let response = client.send(request).await?;
                let (parts, body) = response.into_parts();
                let body = body.collect().await?.to_bytes();
                Ok::<_, kube::Error>(http::Response::from_parts(parts, Full::new(body)))
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(response)) => Ok(response),
                Ok(Err(err)) => Err(tower::BoxError::from(err)),
                Err(_) => Err(tower::BoxError::from(RequestTimeout(timeout))),
            }
        }
    });
    Client::new(service, namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> LeaderConfig {
        LeaderConfig::new("default", "lease", "me")
    }

    #[test]
    fn defaults_are_valid() {
        config().validate().unwrap();
        assert_eq!(config().request_timeout, Duration::from_millis(1250));
    }

    #[test]
    fn timing_constraints() {
        let short = config().with_lease_timing(Duration::from_secs(3), Duration::from_secs(1));
        short.validate().unwrap();
        assert_eq!(short.request_timeout, Duration::from_millis(250));

        for bad in [
            config().with_lease_timing(Duration::from_secs(1), Duration::from_secs(1)),
            config().with_lease_timing(Duration::from_secs(5), Duration::from_secs(5)),
            config().with_lease_timing(Duration::from_secs(5), Duration::ZERO),
            config().with_lease_timing(Duration::from_millis(5500), Duration::from_secs(1)),
            LeaderConfig {
                request_timeout: Duration::from_secs(3),
                ..config()
            },
            LeaderConfig {
                identity: String::new(),
                ..config()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(LeaderError::InvalidConfig(_))),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn default_identities_differ() {
        let a = LeaderConfig::default_identity();
        let b = LeaderConfig::default_identity();
        assert_ne!(a, b);
        assert!(a.contains('_'), "{a}");
    }

    #[test]
    fn backoff_doubles_up_to_max() {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let delays: Vec<_> = (0..5).map(|_| backoff.next()).collect();
        assert_eq!(delays, [500, 1000, 2000, 3000, 3000].map(Duration::from_millis));
        backoff.reset();
        assert_eq!(backoff.next(), Duration::from_millis(500));
    }

    #[tokio::test]
    async fn stop_signal() {
        let (tx, rx) = watch::channel(false);
        let stop = StopSignal { rx };
        assert!(!stop.is_stopping());
        let stopped = stop.stopped();
        fn assert_send_sync<T: Send + Sync + 'static>(_: &T) {}
        assert_send_sync(&stopped);
        tx.send_replace(true);
        tokio::time::timeout(Duration::from_secs(1), stopped)
            .await
            .unwrap();
        assert!(stop.is_stopping());

        // The elector going away also stops the work.
        let (tx, rx) = watch::channel(false);
        let stopped = StopSignal { rx }.stopped();
        drop(tx);
        tokio::time::timeout(Duration::from_secs(1), stopped)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn hung_requests_time_out() {
        // An "API server" that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let silent = tokio::spawn(async move {
            let mut connections = Vec::new();
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                connections.push(socket);
            }
        });
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        let client = Client::try_from(config).unwrap();
        let client = with_request_timeout(client, Duration::from_millis(200));
        let leases: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
            kube::Api::namespaced(client, "default");

        let start = std::time::Instant::now();
        let err = leases.get("lease").await.expect_err("no answer");
        assert!(start.elapsed() < Duration::from_secs(2), "{:?}", start.elapsed());
        let timed_out = match &err {
            kube::Error::Service(inner) => inner.downcast_ref::<RequestTimeout>().is_some(),
            _ => false,
        };
        assert!(timed_out, "{err:?}");
        silent.abort();
    }

    #[test]
    fn panic_messages() {
        assert_eq!(panic_message(Box::new("boom")), "boom");
        assert_eq!(panic_message(Box::new(String::from("bang"))), "bang");
        assert_eq!(panic_message(Box::new(42)), "non-string panic payload");
    }
}
