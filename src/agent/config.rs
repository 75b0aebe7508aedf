//! What an agent needs to know: its node, its libvirt, its Ceph, and its timings.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use uuid::Uuid;

use super::backoff::RestartPolicy;
use super::error::AgentError;
use crate::metrics::Metrics;
use crate::naming::NamespaceMap;

/// Default interval between two `Hypervisor` heartbeats.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Default time without a renewed heartbeat after which the agent destroys its domains: less
/// than the controller's default grace (10 s) minus a heartbeat interval.
pub const DEFAULT_SELF_FENCE_AFTER: Duration = Duration::from_secs(6);
/// Default period of the full re-check of every VM and of the sweep of leftover domains.
pub const DEFAULT_RESYNC_PERIOD: Duration = Duration::from_secs(30);
/// Default longest time a VM's stored XML is compared from a kept copy before RBD is read
/// again (a domain is always defined and started from a fresh read).
pub const DEFAULT_STORED_XML_RECHECK: Duration = Duration::from_secs(300);
/// Default first restart delay after a crash (doubled per consecutive failure).
pub const DEFAULT_RESTART_BACKOFF_BASE: Duration = Duration::from_secs(5);
/// Default longest restart delay.
pub const DEFAULT_RESTART_BACKOFF_MAX: Duration = Duration::from_secs(300);
/// Default number of consecutive failures after which the agent stops restarting a VM.
pub const DEFAULT_MAX_CONSECUTIVE_FAILURES: u32 = 5;
/// Graceful shutdown time given to a domain whose VirtualMachine no longer exists.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How the agent reaches Ceph to read the XML each VM runs (RBD image metadata `xml` on the
/// system image).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CephConfig {
    /// The ceph.conf to read.
    pub conf_path: PathBuf,
    /// The cephx id without `client.`, e.g. `admin`.
    pub client_id: String,
    /// The pool holding the VMs' images.
    pub pool: String,
    /// Kubernetes namespace -> RBD namespace.
    pub namespaces: NamespaceMap,
    /// How long connecting may wait for the monitors.
    pub mount_timeout: Duration,
    /// Further librados configuration overrides (`rados_conf_set`), e.g. `admin_socket`.
    pub options: Vec<(String, String)>,
}

impl CephConfig {
    /// A configuration with a 10 s mount timeout and no overrides.
    pub fn new(conf_path: impl Into<PathBuf>, client_id: impl Into<String>, pool: impl Into<String>) -> Self {
        CephConfig {
            conf_path: conf_path.into(),
            client_id: client_id.into(),
            pool: pool.into(),
            namespaces: NamespaceMap::default(),
            mount_timeout: Duration::from_secs(10),
            options: Vec::new(),
        }
    }
}

/// The Ceph secret to keep defined in libvirt, so that QEMU can authenticate to RBD.
#[derive(Clone, PartialEq, Eq)]
pub struct CephSecretConfig {
    /// The usage name, e.g. `client.libvirt secret`.
    pub usage_name: String,
    /// The UUID the domain XMLs refer to (`<secret type='ceph' uuid='...'/>`).
    pub uuid: Uuid,
    /// The Ceph key as `ceph auth get-key` prints it (base64).
    pub key_base64: String,
}

impl fmt::Debug for CephSecretConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CephSecretConfig")
            .field("usage_name", &self.usage_name)
            .field("uuid", &self.uuid)
            .field("key_base64", &"<redacted>")
            .finish()
    }
}

/// Configuration of one node agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The node name: the `Hypervisor` object's name and the value of the VMs' node label.
    pub node_name: String,
    /// The libvirt URI of this hypervisor, e.g. `qemu:///system`.
    pub libvirt_uri: String,
    /// The libvirt URI other hypervisors' libvirtd migrate VMs to; `None`: derived from
    /// `libvirt_uri` (see [`AgentConfig::migration_uri`]).
    pub migration_uri: Option<String>,
    pub ceph: CephConfig,
    /// The Ceph secret to keep in libvirt; `None` with `auth none`.
    pub ceph_secret: Option<CephSecretConfig>,
    /// Interval between two `Hypervisor` status reports.
    pub heartbeat_interval: Duration,
    /// Time without a renewed heartbeat after which the agent destroys its domains (zero: never).
    /// Must stay below the controller's grace, so the domains are gone before they start elsewhere.
    pub self_fence_after: Duration,
    /// Every VM is re-checked (and leftover domains swept) at least this often.
    pub resync_period: Duration,
    /// A VM's XML is read from RBD again at least this often while its spec does not change
    /// (a change made in RBD by hand shows as RestartRequired that much later).
    pub stored_xml_recheck: Duration,
    /// First restart delay after a crash or failed start; doubled per consecutive failure.
    pub restart_backoff_base: Duration,
    /// Longest restart delay.
    pub restart_backoff_max: Duration,
    /// After this many consecutive failures the VM is reported Failed and not restarted
    /// until its spec changes.
    pub max_consecutive_failures: u32,
    /// How long a restarted domain must run before its consecutive failures are forgotten;
    /// `None` = twice `restart_backoff_max`.
    pub stable_period: Option<Duration>,
    /// Graceful shutdown time for domains whose VirtualMachine is gone.
    pub default_stop_timeout: Duration,
    /// Where the agent counts its libvirt writes (the registry its `/metrics` serves).
    pub metrics: Metrics,
}

impl AgentConfig {
    /// A configuration with the default timings and no Ceph secret.
    pub fn new(node_name: impl Into<String>, libvirt_uri: impl Into<String>, ceph: CephConfig) -> Self {
        AgentConfig {
            node_name: node_name.into(),
            libvirt_uri: libvirt_uri.into(),
            migration_uri: None,
            ceph,
            ceph_secret: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            self_fence_after: DEFAULT_SELF_FENCE_AFTER,
            resync_period: DEFAULT_RESYNC_PERIOD,
            stored_xml_recheck: DEFAULT_STORED_XML_RECHECK,
            restart_backoff_base: DEFAULT_RESTART_BACKOFF_BASE,
            restart_backoff_max: DEFAULT_RESTART_BACKOFF_MAX,
            max_consecutive_failures: DEFAULT_MAX_CONSECUTIVE_FAILURES,
            stable_period: None,
            default_stop_timeout: DEFAULT_STOP_TIMEOUT,
            metrics: Metrics::new(),
        }
    }

    /// The URI published for incoming live migrations: the one configured; else a libvirt URI
    /// with a remote transport as it is (`qemu+tcp://...`, `qemu+unix://...?socket=`); else, for
    /// the local `qemu:///system`, libvirt over SSH to the node's name (what vm_manager uses).
    /// The test driver cannot migrate: none.
    pub fn migration_uri(&self) -> Option<String> {
        if let Some(uri) = &self.migration_uri {
            return Some(uri.clone());
        }
        let (scheme, rest) = self.libvirt_uri.split_once("://")?;
        match scheme {
            "qemu" => Some(format!("qemu+ssh://{}{rest}", self.node_name)),
            s if s.starts_with("qemu+") => Some(self.libvirt_uri.clone()),
            _ => None,
        }
    }

    /// The restart policy these settings describe.
    pub fn restart_policy(&self) -> RestartPolicy {
        RestartPolicy {
            base: self.restart_backoff_base,
            max: self.restart_backoff_max,
            max_consecutive_failures: self.max_consecutive_failures,
            stable_period: self
                .stable_period
                .unwrap_or(self.restart_backoff_max.saturating_mul(2)),
        }
    }

    /// Refuses settings the agent cannot work with.
    pub fn validate(&self) -> Result<(), AgentError> {
        let invalid = |why: String| Err(AgentError::Config(why));
        if self.node_name.is_empty() {
            return invalid("the node name is empty".into());
        }
        if self.node_name.len() > 63
            || !self
                .node_name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return invalid(format!(
                "node name '{}' cannot be a label value and object name (lowercase letters, digits, '-' and '.', at most 63)",
                self.node_name
            ));
        }
        if self.libvirt_uri.is_empty() {
            return invalid("the libvirt URI is empty".into());
        }
        if self.ceph.pool.is_empty() {
            return invalid("the Ceph pool is empty".into());
        }
        if self.ceph.client_id.is_empty() || self.ceph.client_id.starts_with("client.") {
            return invalid(format!(
                "Ceph client id '{}' must be non-empty and without the 'client.' prefix",
                self.ceph.client_id
            ));
        }
        for (what, value) in [
            ("heartbeat interval", self.heartbeat_interval),
            ("resync period", self.resync_period),
            ("restart back-off base", self.restart_backoff_base),
        ] {
            if value.is_zero() {
                return invalid(format!("the {what} must be positive"));
            }
        }
        if !self.self_fence_after.is_zero() && self.self_fence_after <= self.heartbeat_interval {
            return invalid(format!(
                "the self-fence deadline ({:?}) must be longer than the heartbeat interval ({:?})",
                self.self_fence_after, self.heartbeat_interval
            ));
        }
        if self.restart_backoff_max < self.restart_backoff_base {
            return invalid(format!(
                "the restart back-off maximum ({:?}) is below its base ({:?})",
                self.restart_backoff_max, self.restart_backoff_base
            ));
        }
        if self.max_consecutive_failures == 0 {
            return invalid("max consecutive failures must be at least 1".into());
        }
        if let Some(secret) = &self.ceph_secret {
            crate::libvirt::decode_ceph_key(&secret.key_base64)
                .map_err(|why| AgentError::Config(format!("Ceph secret '{}': {why}", secret.usage_name)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AgentConfig {
        AgentConfig::new(
            "hv1",
            "test:///tmp/hv1.xml",
            CephConfig::new("/etc/ceph/ceph.conf", "admin", "rbd"),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = config();
        c.validate().unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(c.self_fence_after, Duration::from_secs(6));
        assert_eq!(c.max_consecutive_failures, 5);
        let p = c.restart_policy();
        assert_eq!(p.stable_period, Duration::from_secs(600));
    }

    #[test]
    fn refuses_bad_settings() {
        let mut c = config();
        c.node_name = "HV_1".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.restart_backoff_max = Duration::from_secs(1);
        assert!(c.validate().is_err());
        let mut c = config();
        c.ceph.client_id = "client.admin".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.self_fence_after = c.heartbeat_interval;
        assert!(c.validate().is_err());
        let mut c = config();
        c.ceph_secret = Some(CephSecretConfig {
            usage_name: "client.libvirt secret".into(),
            uuid: Uuid::nil(),
            key_base64: "not base64!".into(),
        });
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("client.libvirt secret"), "{err}");
        assert!(!format!("{:?}", c.ceph_secret).contains("not base64"));
    }
}

#[cfg(test)]
mod migration_uri_tests {
    use super::*;

    #[test]
    fn the_migration_uri_is_reachable_from_other_hosts() {
        let config = |uri: &str, configured: Option<&str>| {
            let mut c = AgentConfig::new("hv1", uri, CephConfig::new("/etc/ceph/ceph.conf", "admin", "rbd"));
            c.migration_uri = configured.map(str::to_owned);
            c.migration_uri()
        };
        assert_eq!(
            config("qemu:///system", None).as_deref(),
            Some("qemu+ssh://hv1/system")
        );
        let socket = "qemu+unix:///system?socket=/run/hv1/libvirt-sock";
        assert_eq!(config(socket, None).as_deref(), Some(socket));
        assert_eq!(config("test:///tmp/hv1.xml", None), None);
        assert_eq!(
            config("qemu:///system", Some("qemu+tls://hv1.example/system")).as_deref(),
            Some("qemu+tls://hv1.example/system")
        );
    }
}
