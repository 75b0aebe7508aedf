//! The test bed the harness runs against (from `hack/testbed.sh env`), and the counters it
//! reads from outside the operator: the OSD's op counters (admin socket), the API server's
//! request metrics, and /proc for CPU time and RSS.

use std::path::PathBuf;
use std::time::Duration;

use kube::Client;
use seapath_operator::ceph::{Cluster, ClusterConfig};
use uuid::Uuid;

fn env(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => anyhow::bail!(
            "{name} is not set: run the benchmark with bench/run.sh (or eval \"$(hack/testbed.sh env --instance NAME)\" first)"
        ),
    }
}

#[derive(Clone, Debug)]
pub struct Testbed {
    pub dir: PathBuf,
    pub ceph_conf: PathBuf,
    pub ceph_client: String,
    pub pool: String,
    pub mon_host: String,
    pub mon_port: u16,
    /// `(node, libvirt URI)` of the simulated hypervisors.
    pub nodes: Vec<(String, String)>,
    /// The libvirt secret UUID written into the domains' RBD disks (cephx only).
    pub secret_uuid: Option<Uuid>,
    pub libvirt_key: Option<String>,
    /// Ceph's default paxos propose interval (SEAPATH_CEPH_SLOW_MON=1) instead of 0.05 s.
    pub slow_mon: bool,
}

impl Testbed {
    pub fn from_env() -> anyhow::Result<Testbed> {
        let dir = PathBuf::from(env("SEAPATH_TESTBED_DIR")?);
        let ceph_conf = PathBuf::from(env("CEPH_CONF")?);
        let conf_text = std::fs::read_to_string(&ceph_conf)?;
        let nodes = env("SEAPATH_LIBVIRT_NODES")?
            .split(',')
            .filter_map(|e| e.split_once('='))
            .map(|(n, u)| (n.trim().to_owned(), u.trim().to_owned()))
            .collect::<Vec<_>>();
        anyhow::ensure!(
            nodes.len() >= 2 && nodes.iter().all(|(_, u)| u.starts_with("test:///")),
            "the benchmark needs two libvirt test-driver nodes (hack/testbed.sh up --hypervisors 2)"
        );
        let cephx = env("SEAPATH_CEPH_AUTH")? == "cephx";
        Ok(Testbed {
            dir,
            ceph_conf,
            ceph_client: env("SEAPATH_CEPH_CLIENT")?,
            pool: env("SEAPATH_CEPH_POOL")?,
            mon_host: env("SEAPATH_CEPH_MON_HOST")?,
            mon_port: env("SEAPATH_CEPH_MON_PORT")?.parse()?,
            nodes: nodes.into_iter().take(2).collect(),
            secret_uuid: cephx.then(Uuid::new_v4),
            libvirt_key: std::env::var("SEAPATH_CEPH_LIBVIRT_KEY")
                .ok()
                .filter(|k| !k.is_empty()),
            slow_mon: !conf_text.contains("paxos propose interval = 0.05"),
        })
    }

    pub fn osd_socket(&self) -> PathBuf {
        self.dir.join("ceph/run/osd.0.asok")
    }

    /// A Ceph connection of this process, as the test bed's client, without an admin socket
    /// (several connections live in the harness).
    pub fn ceph_cluster(&self) -> anyhow::Result<Cluster> {
        Ok(Cluster::connect(ClusterConfig {
            conf_path: self.ceph_conf.clone(),
            client_id: self.ceph_client.clone(),
            mount_timeout: Duration::from_secs(10),
            options: vec![("admin_socket".into(), String::new())],
        })?)
    }
}

/// The OSD's cumulative op counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsdOps {
    /// Client ops that read only.
    pub reads: u64,
    /// Client ops that write (`op_w` + `op_rw`: data, omap/xattr, watch, class calls that write).
    pub writes: u64,
    /// Total service time of all client ops, seconds (`op_latency`).
    pub seconds: f64,
    pub ops: u64,
}

impl OsdOps {
    pub fn since(&self, before: &OsdOps) -> OsdOps {
        OsdOps {
            reads: self.reads.saturating_sub(before.reads),
            writes: self.writes.saturating_sub(before.writes),
            seconds: self.seconds - before.seconds,
            ops: self.ops.saturating_sub(before.ops),
        }
    }
}

/// Reads the OSD's counters straight from its admin socket (the protocol of `ceph
/// --admin-daemon`: a JSON command ended by NUL; the answer is a big-endian u32 length and
/// that many bytes), which takes a millisecond instead of the ceph CLI's few hundred.
pub async fn osd_ops(tb: &Testbed) -> anyhow::Result<OsdOps> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tb.osd_socket();
    let mut stream = tokio::net::UnixStream::connect(&socket)
        .await
        .map_err(|e| anyhow::anyhow!("connecting to the OSD admin socket {}: {e}", socket.display()))?;
    stream.write_all(b"{\"prefix\": \"perf dump\"}\0").await?;
    let len = stream.read_u32().await? as usize;
    let mut out = vec![0u8; len];
    stream.read_exact(&mut out).await?;
    let v: serde_json::Value = serde_json::from_slice(&out)?;
    let osd = &v["osd"];
    anyhow::ensure!(
        osd.is_object(),
        "no osd section in the perf dump of {}",
        socket.display()
    );
    let n = |k: &str| osd[k].as_u64().unwrap_or_default();
    Ok(OsdOps {
        reads: n("op_r"),
        writes: n("op_w") + n("op_rw"),
        seconds: osd["op_latency"]["sum"].as_f64().unwrap_or_default(),
        ops: osd["op_latency"]["avgcount"].as_u64().unwrap_or_default(),
    })
}

impl std::ops::AddAssign for OsdOps {
    fn add_assign(&mut self, other: OsdOps) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.seconds += other.seconds;
        self.ops += other.ops;
    }
}

/// API server requests on some resources (Hypervisor heartbeats and leases left out), watches
/// excluded.
#[derive(Clone, Copy, Debug, Default)]
pub struct ApiRequests {
    pub requests: f64,
    pub writes: f64,
    /// Server-side time summed over the requests (`apiserver_request_duration_seconds_sum`).
    pub seconds: f64,
}

impl ApiRequests {
    pub fn since(&self, before: &ApiRequests) -> ApiRequests {
        ApiRequests {
            requests: self.requests - before.requests,
            writes: self.writes - before.writes,
            seconds: self.seconds - before.seconds,
        }
    }
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    let pattern = format!("{name}=\"");
    let start = labels
        .split(',')
        .find_map(|part| part.strip_prefix(pattern.as_str()))?;
    start.strip_suffix('"')
}

/// Requests on VirtualMachines and Events.
pub async fn api_requests(client: &Client) -> anyhow::Result<ApiRequests> {
    api_requests_of(client, &["virtualmachines", "events"]).await
}

/// Requests on `resources` (plural names, e.g. `virtualmachinesnapshots`).
pub async fn api_requests_of(client: &Client, resources: &[&str]) -> anyhow::Result<ApiRequests> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(request).await?;
    let mut out = ApiRequests::default();
    for line in text.lines() {
        let (metric, rest) = match line.split_once('{') {
            Some(x) => x,
            None => continue,
        };
        if metric != "apiserver_request_total" && metric != "apiserver_request_duration_seconds_sum" {
            continue;
        }
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let resource = label(labels, "resource").unwrap_or_default();
        let verb = label(labels, "verb").unwrap_or_default();
        if !resources.contains(&resource) || matches!(verb, "WATCH" | "WATCHLIST" | "CONNECT") {
            continue;
        }
        let value: f64 = value.trim().parse().unwrap_or_default();
        if metric == "apiserver_request_total" {
            out.requests += value;
            if matches!(verb, "POST" | "PUT" | "PATCH" | "APPLY" | "DELETE") {
                out.writes += value;
            }
        } else {
            out.seconds += value;
        }
    }
    Ok(out)
}

/// CPU time (user + system) of a process, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name may hold spaces: fields count from after its closing parenthesis.
    let after = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| anyhow::anyhow!("unreadable /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of stat (utime, stime) are the 12th and 13th after the name.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok(ticks as f64 / hz)
}

/// Resident set size of a process, in MiB.
pub fn rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/{pid}/status"))?;
    Ok(kib / 1024.0)
}

/// `model name` of the CPU and the number of cores this process may use.
pub fn machine() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores ({model}), {mem_gib:.0} GiB RAM")
}

/// Load average over the last minute (other work on the machine skews the numbers).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default()
}

/// The header of a report: the machine, its load, the test bed, and `what` ran (one line).
pub fn setup_note(tb: &Testbed, what: &str) -> String {
    let mon = if tb.slow_mon {
        "slow mon: Ceph's default paxos propose interval (1 s, SEAPATH_CEPH_SLOW_MON=1)"
    } else {
        "mon: paxos propose interval 0.05 s (test bed default)"
    };
    format!(
        "setup: {}; load average at start {}\n       \
         kube-apiserver + etcd, Ceph 16 (1 mon, 1 memstore OSD, pool {}), {}; libvirt test driver hv1/hv2\n       \
         {what}\n",
        machine(),
        loadavg(),
        tb.pool,
        mon,
    )
}
