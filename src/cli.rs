//! Command-line interface: flags (each also readable from the environment) and what each
//! subcommand runs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};
use uuid::Uuid;

use crate::agent::{AgentConfig, CephConfig as AgentCephConfig, CephSecretConfig};
use crate::controller::context::PolicyConfig;
use crate::controller::hypervisor::FencingSettings;
use crate::controller::run::ControllerConfig;
use crate::domain_xml::{AllowanceSpec, Allowances, CephAuthRef};
use crate::naming::{NamespaceMap, SharedImageNamespaces};
use crate::telemetry::LogFormat;

/// Runs SEAPATH virtual machines (Ceph RBD disks, libvirt domains) from Kubernetes resources.
#[derive(Parser, Debug)]
#[command(name = "seapath-operator", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Print the CustomResourceDefinitions as YAML, or write/check them in a directory.
    Crdgen {
        /// Write one file per CRD into this directory instead of printing them.
        #[arg(long)]
        out_dir: Option<PathBuf>,
        /// With --out-dir: fail if the files there differ from what the types generate.
        #[arg(long, requires = "out_dir")]
        check: bool,
    },
    /// Run the cluster-wide controller (storage, placement, status).
    Controller(ControllerArgs),
    /// Run the agent of one hypervisor (libvirt domains, Hypervisor heartbeat).
    Agent(AgentArgs),
}

/// Flags every long-running subcommand has.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// kubeconfig to use; in-cluster configuration when unset.
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Log format.
    #[arg(long, env = "SEAPATH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Address of the /metrics, /healthz and /readyz endpoints.
    #[arg(long, env = "SEAPATH_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
}

/// Ceph client settings.
#[derive(Args, Debug, Clone)]
pub struct CephArgs {
    /// ceph.conf of the cluster (it names the keyring when cephx is used).
    #[arg(long, env = "CEPH_CONF", default_value = "/etc/ceph/ceph.conf")]
    pub ceph_conf: PathBuf,
    /// Ceph client id, without `client.`.
    #[arg(long, env = "SEAPATH_CEPH_CLIENT", default_value = "admin")]
    pub ceph_client: String,
    /// Keyring file; overrides the one ceph.conf names.
    #[arg(long, env = "SEAPATH_CEPH_KEYRING")]
    pub ceph_keyring: Option<PathBuf>,
    /// RBD pool of the VMs.
    #[arg(long, env = "SEAPATH_CEPH_POOL", default_value = "rbd")]
    pub pool: String,
    /// Kubernetes namespace to RBD namespace mapping, `ns=rbdns,...`; an empty right-hand side
    /// is RBD's default namespace (where vm_manager sees VMs). Unlisted namespaces map to an
    /// RBD namespace of the same name.
    #[arg(long, env = "SEAPATH_RBD_NAMESPACE_MAP", default_value = "", value_parser = NamespaceMap::parse)]
    pub rbd_namespace_map: NamespaceMap,
}

impl CephArgs {
    pub fn options(&self) -> Vec<(String, String)> {
        self.ceph_keyring
            .iter()
            .map(|k| ("keyring".to_owned(), k.display().to_string()))
            .collect()
    }
}

fn namespace_set(text: &str) -> Result<BTreeSet<String>, String> {
    Ok(text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect())
}

/// The per-namespace allowances of `--device-policy`; an empty string is none.
fn device_policy(text: &str) -> Result<BTreeMap<String, Allowances>, String> {
    if text.trim().is_empty() {
        return Ok(BTreeMap::new());
    }
    let specs: BTreeMap<String, AllowanceSpec> =
        serde_yaml::from_str(text).map_err(|e| format!("expected {{\"NAMESPACE\": {{...}}, ...}}: {e}"))?;
    specs
        .into_iter()
        .map(|(namespace, spec)| {
            let allowances = spec
                .compile()
                .map_err(|e| format!("namespace {namespace}: {e}"))?;
            Ok((namespace, allowances))
        })
        .collect()
}

fn seconds(text: &str) -> Result<Duration, String> {
    text.parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|e| format!("expected a number of seconds: {e}"))
}

#[derive(Args, Debug, Clone)]
pub struct ControllerArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub ceph: CephArgs,
    /// Namespaces whose base XML may pass host devices (hostdev, block disks) to guests.
    #[arg(long, env = "SEAPATH_ALLOW_HOST_DEVICES_IN", default_value = "", value_parser = namespace_set)]
    pub allow_host_devices_in: BTreeSet<String>,
    /// Namespaces whose base XML may use host paths (file disks, filesystems, kernels).
    #[arg(long, env = "SEAPATH_ALLOW_HOST_PATHS_IN", default_value = "", value_parser = namespace_set)]
    pub allow_host_paths_in: BTreeSet<String>,
    /// Namespaces whose base XML may use qemu:commandline and other QEMU passthrough.
    #[arg(long, env = "SEAPATH_ALLOW_QEMU_PASSTHROUGH_IN", default_value = "", value_parser = namespace_set)]
    pub allow_qemu_passthrough_in: BTreeSet<String>,
    /// Fine-grained allowances per namespace, as a JSON (or YAML) object
    /// `{"NAMESPACE": {"profile": "seapath", "bridges": ["br0"], ...}}`: emulators,
    /// partitions, bridges, tapDevices, directDevices, vhostUserDirs, networks, pciDevices,
    /// hugepages (docs/operations.md, "Host resources of a base XML").
    #[arg(long, env = "SEAPATH_DEVICE_POLICY", default_value = "{}", value_parser = device_policy)]
    pub device_policy: BTreeMap<String, Allowances>,
    /// UUID of the libvirt secret holding the Ceph key (cephx); none with `auth none`.
    #[arg(long, env = "SEAPATH_LIBVIRT_SECRET_UUID")]
    pub libvirt_secret_uuid: Option<Uuid>,
    /// Ceph user libvirt authenticates as.
    #[arg(long, env = "SEAPATH_CEPH_LIBVIRT_USER", default_value = "libvirt")]
    pub libvirt_user: String,
    /// Directories from which `path` disk sources may be imported (comma separated); a path
    /// source outside them is refused.
    #[arg(long, env = "SEAPATH_IMPORT_DIRS", value_delimiter = ',')]
    pub import_dirs: Vec<PathBuf>,
    /// RBD namespaces every tenant may copy (`rbd` source) or clone (`golden` source) disks
    /// from, comma separated: `NAMESPACE` (of --pool), `POOL/NAMESPACE`, or `POOL/` for a pool's
    /// default namespace. A VM always reads its own RBD namespace; nothing else unless listed.
    #[arg(long, env = "SEAPATH_SHARED_IMAGE_NAMESPACES", default_value = "", value_parser = SharedImageNamespaces::parse)]
    pub shared_image_namespaces: SharedImageNamespaces,
    /// Run the snapshot, restore and schedule controllers too (off: another process runs them).
    #[arg(long, env = "SEAPATH_SNAPSHOTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub snapshots: bool,
    /// Seconds after which a VM's images are listed again for snapshots taken outside the
    /// operator (a change to the VM or its snapshot objects lists them at once).
    #[arg(long, env = "SEAPATH_UNMANAGED_SNAPSHOT_REFRESH", default_value = "600", value_parser = seconds)]
    pub unmanaged_snapshot_refresh: Duration,
    /// VMs that leave a draining hypervisor at once (live migrations or moves by stop and
    /// start).
    #[arg(long, env = "SEAPATH_DRAIN_PARALLEL", default_value_t = crate::controller::drain::DEFAULT_PARALLEL)]
    pub drain_parallel: usize,
    /// VMs reconciled at once.
    #[arg(long, env = "SEAPATH_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// Seconds after which a VM's storage is read from Ceph again.
    #[arg(long, env = "SEAPATH_STORAGE_RECHECK", default_value = "300", value_parser = seconds)]
    pub storage_recheck: Duration,
    /// Seconds without a new heartbeat after which a hypervisor is lost: it takes no new VM,
    /// its VMs' Ready condition says NodeLost, and if it has VMs it is fenced through Ceph and
    /// they start elsewhere. Longer than an agent restart and than the agents' --self-fence-after.
    #[arg(long, env = "SEAPATH_NODE_LOST_GRACE", default_value = "10", value_parser = seconds)]
    pub node_lost_grace: Duration,
    /// Seconds a fenced host's Ceph clients stay blocklisted if the host never rejoins (a host
    /// that rejoins clean is let in at once).
    #[arg(long, env = "SEAPATH_FENCE_BLOCKLIST_EXPIRY", default_value = "86400", value_parser = seconds)]
    pub fence_blocklist_expiry: Duration,
    /// Command run with the lost node's name before it is fenced through Ceph (power fencing,
    /// e.g. a wrapper around fence_ipmilan); fencing waits until it exits with 0.
    #[arg(long, env = "SEAPATH_POWER_FENCE_COMMAND")]
    pub power_fence_command: Option<PathBuf>,
    /// Seconds between two reconciles of an unchanged VM.
    #[arg(long, env = "SEAPATH_RESYNC", default_value = "300", value_parser = seconds)]
    pub resync: Duration,
    /// Run only while holding the Lease (for several replicas).
    #[arg(long, env = "SEAPATH_LEADER_ELECTION", default_value_t = false)]
    pub leader_election: bool,
    /// Namespace of the leader Lease.
    #[arg(long, env = "POD_NAMESPACE", default_value = "seapath-system")]
    pub lease_namespace: String,
    /// This replica's identity (Pod name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
}

impl ControllerArgs {
    pub fn identity(&self) -> String {
        self.identity.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        })
    }

    pub fn config(&self) -> ControllerConfig {
        ControllerConfig {
            ceph_conf: self.ceph.ceph_conf.clone(),
            ceph_client: self.ceph.ceph_client.clone(),
            ceph_options: self.ceph.options(),
            pool: self.ceph.pool.clone(),
            namespace_map: self.ceph.rbd_namespace_map.clone(),
            policy: PolicyConfig {
                host_devices: self.allow_host_devices_in.clone(),
                host_paths: self.allow_host_paths_in.clone(),
                qemu_passthrough: self.allow_qemu_passthrough_in.clone(),
                allowances: self.device_policy.clone(),
            },
            libvirt_auth: self.libvirt_secret_uuid.map(|secret_uuid| CephAuthRef {
                username: self.libvirt_user.clone(),
                secret_uuid,
            }),
            concurrency: self.concurrency,
            storage_recheck: self.storage_recheck,
            fencing: FencingSettings {
                grace: self.node_lost_grace,
                blocklist_expiry: self.fence_blocklist_expiry,
                power_fence_command: self.power_fence_command.clone(),
            },
            resync: self.resync,
            import_dirs: self
                .import_dirs
                .iter()
                .filter(|d| !d.as_os_str().is_empty())
                .cloned()
                .collect(),
            shared_image_namespaces: self.shared_image_namespaces.clone(),
            snapshots: self.snapshots,
            unmanaged_snapshot_refresh: self.unmanaged_snapshot_refresh,
            drain_parallel: self.drain_parallel,
            instance: self.identity(),
            guard_object: format!("seapath-controller-guard.{}", self.lease_namespace),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct AgentArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub ceph: CephArgs,
    /// Name of this hypervisor (its Hypervisor object and the node label of its VMs).
    #[arg(long, env = "NODE_NAME")]
    pub node: String,
    /// libvirt URI of this hypervisor.
    #[arg(long, env = "SEAPATH_LIBVIRT_URI", default_value = "qemu:///system")]
    pub libvirt_uri: String,
    /// libvirt URI the libvirtd of other hypervisors reach this one at for live migrations
    /// (published in the Hypervisor's status). Default: a `qemu+...` URI as it is, else
    /// `qemu+ssh://NODE/system`.
    #[arg(long, env = "SEAPATH_MIGRATION_URI")]
    pub migration_uri: Option<String>,
    /// UUID of the libvirt secret to keep defined with the Ceph key (cephx).
    #[arg(long, env = "SEAPATH_LIBVIRT_SECRET_UUID", requires = "ceph_libvirt_key")]
    pub libvirt_secret_uuid: Option<Uuid>,
    /// The Ceph key of the libvirt user, base64 as `ceph auth get-key` prints it.
    #[arg(long, env = "SEAPATH_CEPH_LIBVIRT_KEY", hide_env_values = true)]
    pub ceph_libvirt_key: Option<String>,
    /// Usage name of the libvirt secret.
    #[arg(
        long,
        env = "SEAPATH_LIBVIRT_SECRET_USAGE",
        default_value = "client.libvirt secret"
    )]
    pub libvirt_secret_usage: String,
    /// Seconds between two heartbeats.
    #[arg(long, env = "SEAPATH_HEARTBEAT_INTERVAL", default_value = "2", value_parser = seconds)]
    pub heartbeat_interval: Duration,
    /// Seconds without a renewed heartbeat after which the agent destroys its domains itself,
    /// before the controller starts them elsewhere (0: never). Keep it below the controller's
    /// --node-lost-grace minus one heartbeat interval.
    #[arg(long, env = "SEAPATH_SELF_FENCE_AFTER", default_value = "6", value_parser = seconds)]
    pub self_fence_after: Duration,
    /// Seconds between two full checks of every domain on this host.
    #[arg(long, env = "SEAPATH_AGENT_RESYNC", default_value = "30", value_parser = seconds)]
    pub resync: Duration,
    /// Seconds a VM's XML read from RBD is kept for comparison with its domain while its spec
    /// does not change (domains are always defined and started from a fresh read).
    #[arg(long, env = "SEAPATH_STORED_XML_RECHECK", default_value = "300", value_parser = seconds)]
    pub stored_xml_recheck: Duration,
    /// First restart delay after a guest crash, doubled per consecutive failure.
    #[arg(long, env = "SEAPATH_RESTART_BACKOFF_BASE", default_value = "5", value_parser = seconds)]
    pub restart_backoff_base: Duration,
    /// Longest restart delay.
    #[arg(long, env = "SEAPATH_RESTART_BACKOFF_MAX", default_value = "300", value_parser = seconds)]
    pub restart_backoff_max: Duration,
    /// Consecutive failures after which a VM is reported Failed and not restarted.
    #[arg(long, env = "SEAPATH_MAX_CONSECUTIVE_FAILURES", default_value_t = 5)]
    pub max_consecutive_failures: u32,
}

impl AgentArgs {
    pub fn config(&self) -> AgentConfig {
        let mut ceph = AgentCephConfig::new(&self.ceph.ceph_conf, &self.ceph.ceph_client, &self.ceph.pool);
        ceph.namespaces = self.ceph.rbd_namespace_map.clone();
        ceph.options = self.ceph.options();
        let mut config = AgentConfig::new(&self.node, &self.libvirt_uri, ceph);
        config.migration_uri = self.migration_uri.clone();
        config.ceph_secret = match (self.libvirt_secret_uuid, &self.ceph_libvirt_key) {
            (Some(uuid), Some(key)) if !key.is_empty() => Some(CephSecretConfig {
                usage_name: self.libvirt_secret_usage.clone(),
                uuid,
                key_base64: key.clone(),
            }),
            _ => None,
        };
        config.heartbeat_interval = self.heartbeat_interval;
        config.self_fence_after = self.self_fence_after;
        config.resync_period = self.resync;
        config.stored_xml_recheck = self.stored_xml_recheck;
        config.restart_backoff_base = self.restart_backoff_base;
        config.restart_backoff_max = self.restart_backoff_max;
        config.max_consecutive_failures = self.max_consecutive_failures;
        config
    }
}

/// A client from the kubeconfig given, or the in-cluster/default configuration.
pub async fn kube_client(kubeconfig: Option<&PathBuf>) -> Result<Client, kube::Error> {
    let config = match kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .map_err(kube::Error::InferKubeconfig)?
        }
        None => kube::Config::infer().await.map_err(kube::Error::InferConfig)?,
    };
    Client::try_from(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain_xml::{AllowanceKind, PolicyFlag};

    fn controller(args: &[&str]) -> Result<ControllerArgs, clap::Error> {
        let argv = ["seapath-operator", "controller"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Command::Controller(args) => Ok(args),
            other => panic!("parsed {other:?}"),
        }
    }

    #[test]
    fn device_policy_gives_namespaces_profiles_and_allowances() {
        let args = controller(&[
            "--allow-host-paths-in",
            "lab",
            "--device-policy",
            r#"{"substation": {"profile": "seapath"}, "bay3": {"bridges": ["br-bay3"], "hugepages": true}}"#,
        ])
        .unwrap();
        let policy = args.config().policy;
        let substation = policy.for_namespace("substation");
        assert!(
            substation
                .allowances
                .allows(AllowanceKind::PciDevice, Some("0000:3b:00.1"))
        );
        assert!(!substation.allows(PolicyFlag::HostDevices));
        let bay3 = policy.for_namespace("bay3");
        assert!(bay3.allowances.allows(AllowanceKind::Bridge, Some("br-bay3")));
        assert!(!bay3.allowances.allows(AllowanceKind::Bridge, Some("br0")));
        assert!(bay3.allowances.allows(AllowanceKind::Hugepages, None));
        assert!(
            bay3.allowances
                .allows(AllowanceKind::Emulator, Some("/usr/bin/kvm"))
        );
        let lab = policy.for_namespace("lab");
        assert!(lab.allows(PolicyFlag::HostPaths));
        assert_eq!(lab.allowances, Allowances::default());
        assert_eq!(
            policy.for_namespace("other"),
            crate::domain_xml::DevicePolicy::default()
        );
    }

    #[test]
    fn device_policy_reads_yaml_and_an_empty_value() {
        assert!(device_policy("").unwrap().is_empty());
        assert!(device_policy("{}").unwrap().is_empty());
        let yaml = "substation:\n  profile: seapath\n  pciDevices: ['0000:3b:*']\n";
        assert!(
            device_policy(yaml).unwrap()["substation"].allows(AllowanceKind::PciDevice, Some("0000:3b:00.0"))
        );
    }

    #[test]
    fn a_wrong_device_policy_stops_the_controller_with_a_message() {
        for (value, expected) in [
            (
                r#"{"bay3": {"emulators": ["qemu"]}}"#,
                "namespace bay3: emulators: \"qemu\" is not an absolute path pattern",
            ),
            (r#"{"bay3": {"bridge": ["br0"]}}"#, "unknown field `bridge`"),
            (r#"{"bay3": {"profile": "all"}}"#, "unknown variant `all`"),
            (r#"["bay3"]"#, "expected {\"NAMESPACE\": {...}, ...}"),
        ] {
            let err = controller(&["--device-policy", value]).unwrap_err().to_string();
            assert!(err.contains(expected), "{value}: {err}");
        }
    }
}
