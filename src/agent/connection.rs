//! The agent's long-lived connections: one to libvirt (reconnected when it dies) and one to
//! Ceph, each used through `spawn_blocking`. Also the counters tests and metrics read.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Mutex;
use tracing::{info, warn};

use super::config::{CephConfig, CephSecretConfig};
use super::error::AgentError;
use crate::ceph::{CephError, Cluster, ClusterConfig};
use crate::libvirt::{CephSecretSpec, Hypervisor};
use crate::metrics::Metrics;
use crate::naming::META_XML;

/// Counters of what the agent did; shared with [`super::Agent::stats`]. libvirt writes are
/// also counted, by operation, in the agent's `/metrics`.
#[derive(Debug, Default)]
pub struct AgentStats {
    metrics: Option<Metrics>,
    libvirt_writes: AtomicU64,
    vm_status_writes: AtomicU64,
    hypervisor_status_writes: AtomicU64,
    reconciles: AtomicU64,
    sweeps: AtomicU64,
}

/// A snapshot of [`AgentStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// libvirt calls that change something: define, start, shutdown, destroy, undefine,
    /// secret definition.
    pub libvirt_writes: u64,
    /// Status patches of VirtualMachines.
    pub vm_status_writes: u64,
    /// Status patches of the Hypervisor (heartbeats).
    pub hypervisor_status_writes: u64,
    /// VM reconciliations run.
    pub reconciles: u64,
    /// Sweeps of leftover domains run.
    pub sweeps: u64,
}

impl AgentStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            libvirt_writes: self.libvirt_writes.load(Ordering::Relaxed),
            vm_status_writes: self.vm_status_writes.load(Ordering::Relaxed),
            hypervisor_status_writes: self.hypervisor_status_writes.load(Ordering::Relaxed),
            reconciles: self.reconciles.load(Ordering::Relaxed),
            sweeps: self.sweeps.load(Ordering::Relaxed),
        }
    }

    /// Counters that also feed `metrics`.
    pub(crate) fn with_metrics(metrics: Metrics) -> Self {
        AgentStats {
            metrics: Some(metrics),
            ..Default::default()
        }
    }

    pub(crate) fn libvirt_write(&self, op: &str) {
        self.libvirt_writes.fetch_add(1, Ordering::Relaxed);
        if let Some(metrics) = &self.metrics {
            metrics.libvirt_write(op);
        }
    }

    pub(crate) fn vm_status_write(&self) {
        self.vm_status_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn hypervisor_status_write(&self) {
        self.hypervisor_status_writes.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn reconcile(&self) {
        self.reconciles.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn sweep(&self) {
        self.sweeps.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs a blocking closure on tokio's blocking pool.
pub(crate) async fn blocking<T, F>(context: impl Into<String>, f: F) -> Result<T, AgentError>
where
    F: FnOnce() -> Result<T, AgentError> + Send + 'static,
    T: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result,
        Err(error) => Err(AgentError::Blocking {
            context: context.into(),
            error,
        }),
    }
}

/// The libvirt connection of the agent.
pub(crate) struct Libvirt {
    uri: String,
    current: Mutex<Option<Hypervisor>>,
    secret: Option<CephSecretConfig>,
    /// The driver has no secrets (libvirt's test driver): said once, not tried again.
    secrets_unsupported: AtomicBool,
    pub(crate) stats: Arc<AgentStats>,
}

impl Libvirt {
    pub(crate) fn new(
        uri: String,
        secret: Option<CephSecretConfig>,
        preset: Option<Hypervisor>,
        stats: Arc<AgentStats>,
    ) -> Self {
        Libvirt {
            uri,
            current: Mutex::new(preset),
            secret,
            secrets_unsupported: AtomicBool::new(false),
            stats,
        }
    }

    pub(crate) fn uri(&self) -> &str {
        &self.uri
    }

    /// The live connection, (re)connecting if there is none or it died.
    pub(crate) async fn connection(&self) -> Result<Hypervisor, AgentError> {
        let mut current = self.current.lock().await;
        if let Some(hv) = current.as_ref() {
            let probe = hv.clone();
            let alive = blocking("libvirt liveness check", move || Ok(probe.is_alive())).await?;
            if alive {
                return Ok(hv.clone());
            }
            warn!(uri = %self.uri, "libvirt connection lost; reconnecting");
            *current = None;
        }
        let uri = self.uri.clone();
        let hv = blocking("libvirt connect", move || {
            Hypervisor::connect(&uri).map_err(|e| AgentError::libvirt("hypervisor", e))
        })
        .await?;
        info!(uri = %self.uri, "connected to libvirt");
        *current = Some(hv.clone());
        drop(current);
        self.ensure_secret(&hv, true).await;
        Ok(hv)
    }

    /// Runs `f` on the connection in the blocking pool. A connection error drops the
    /// connection so that the next call reconnects.
    pub(crate) async fn run<T, F>(&self, context: impl Into<String>, f: F) -> Result<T, AgentError>
    where
        F: FnOnce(&Hypervisor) -> Result<T, AgentError> + Send + 'static,
        T: Send + 'static,
    {
        let context = context.into();
        let hv = self.connection().await?;
        let result = blocking(context, move || f(&hv)).await;
        if let Err(e) = &result
            && e.is_libvirt_connection()
        {
            self.current.lock().await.take();
        }
        result
    }

    /// Makes sure the Ceph secret exists with its key: always when `set_key` (after each
    /// connect), otherwise only when it is missing or has another UUID. Errors are logged,
    /// never fatal; a driver without secrets is reported once.
    pub(crate) async fn ensure_secret(&self, hv: &Hypervisor, set_key: bool) {
        let Some(secret) = self.secret.clone() else {
            return;
        };
        if self.secrets_unsupported.load(Ordering::Relaxed) {
            return;
        }
        let hv = hv.clone();
        let stats = self.stats.clone();
        let usage = secret.usage_name.clone();
        let result = blocking("ensure Ceph secret", move || {
            let existing = hv
                .find_ceph_secret(&secret.usage_name)
                .map_err(|e| AgentError::libvirt("Ceph secret", e))?;
            if !set_key && existing.is_some_and(|s| s.uuid() == secret.uuid) {
                return Ok(false);
            }
            let spec = CephSecretSpec::new(secret.usage_name.clone())
                .with_uuid(secret.uuid)
                .with_description("Ceph key of the SEAPATH operator's VMs");
            stats.libvirt_write("define_secret");
            hv.ensure_ceph_secret(&spec, &secret.key_base64)
                .map_err(|e| AgentError::libvirt("Ceph secret", e))?;
            Ok(true)
        })
        .await;
        match result {
            Ok(true) => info!(usage = %usage, "defined the Ceph secret in libvirt"),
            Ok(false) => {}
            Err(AgentError::Libvirt { error, .. }) if error.is_unsupported() => {
                self.secrets_unsupported.store(true, Ordering::Relaxed);
                info!(uri = %self.uri, "this libvirt driver has no secrets; the Ceph secret is not managed here: {error}");
            }
            Err(e) => warn!(usage = %usage, "cannot keep the Ceph secret in libvirt: {e}"),
        }
    }

    /// Re-checks the Ceph secret on the current connection (if any).
    pub(crate) async fn keep_secret(&self) {
        let hv = self.current.lock().await.clone();
        if let Some(hv) = hv {
            self.ensure_secret(&hv, false).await;
        }
    }
}

/// The Ceph connection of the agent (read-only use: the XML in image metadata).
pub(crate) struct Ceph {
    config: CephConfig,
    cluster: Mutex<Option<Cluster>>,
}

impl Ceph {
    pub(crate) fn new(config: CephConfig) -> Self {
        Ceph {
            config,
            cluster: Mutex::new(None),
        }
    }

    async fn cluster(&self) -> Result<Cluster, AgentError> {
        let mut current = self.cluster.lock().await;
        if let Some(c) = current.as_ref() {
            return Ok(c.clone());
        }
        let config = ClusterConfig {
            conf_path: self.config.conf_path.clone(),
            client_id: self.config.client_id.clone(),
            mount_timeout: self.config.mount_timeout,
            options: self.config.options.clone(),
        };
        let cluster = blocking("Ceph connect", move || {
            Cluster::connect(config).map_err(|e| AgentError::ceph("Ceph connect", e))
        })
        .await?;
        *current = Some(cluster.clone());
        Ok(cluster)
    }

    /// The `xml` metadata of `image` in the RBD namespace `namespace` of the pool.
    pub(crate) async fn read_xml(
        &self,
        context: String,
        namespace: String,
        image: String,
    ) -> Result<String, AgentError> {
        let cluster = self.cluster().await?;
        let pool = self.config.pool.clone();
        let ctx = context.clone();
        let result = blocking(context, move || {
            let read = || -> Result<String, CephError> {
                let io = cluster.io_context(&pool, &namespace)?;
                let image = io.open_image_read_only(&image, None)?;
                image.metadata_get(META_XML)
            };
            read().map_err(|e| AgentError::ceph(ctx, e))
        })
        .await;
        if let Err(AgentError::Ceph { error, .. }) = &result
            && (error.is_blocklisted() || error.is_timeout())
        {
            // A blocklisted or stuck client stays so: start a new session next time.
            self.cluster.lock().await.take();
        }
        result
    }
}
