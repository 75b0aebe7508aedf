//! The controller, run as its own process (the release binary, as in production): the harness
//! restarts it for the resync, reads its CPU time and RSS from /proc, its reconcile counter
//! from /metrics and its stage timestamps from its JSON log.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::testbed::Testbed;
use crate::timeline::{Micros, now_us};

const BINARY: &str = env!("CARGO_BIN_EXE_seapath-operator");

pub struct ControllerProcess {
    child: Child,
    pub pid: u32,
    pub port: u16,
    pub log: PathBuf,
    /// When the process was spawned.
    pub spawned: Micros,
    pidfile: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl ControllerProcess {
    /// Starts `seapath-operator controller` with JSON logs into `log`. Its PID goes into the test
    /// bed's pids directory, so `hack/testbed.sh down` stops it should the harness die.
    pub fn spawn(tb: &Testbed, log: &Path, import_dir: &Path) -> anyhow::Result<ControllerProcess> {
        let port = free_port()?;
        let out = File::create(log)?;
        let mut command = Command::new(BINARY);
        command
            .args(["controller", "--http-addr", &format!("127.0.0.1:{port}")])
            .env("SEAPATH_LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                "info,kube=warn,seapath_operator::controller::run=debug",
            )
            .env("CEPH_CONF", &tb.ceph_conf)
            .env("SEAPATH_CEPH_CLIENT", &tb.ceph_client)
            .env("SEAPATH_CEPH_POOL", &tb.pool)
            // The snapshot, restore and schedule controllers run in this process (the default,
            // set here so that the caller's environment cannot turn them off).
            .env("SEAPATH_SNAPSHOTS", "true")
            // Where measurement 3 puts its qcow2 (`path` sources must be under an allowed dir).
            .env("SEAPATH_IMPORT_DIRS", import_dir)
            // Measurement 3's golden images are in the pool's default RBD namespace, shared
            // with every tenant as an administrator would share a namespace of golden images
            // (a VM may clone only from its own RBD namespace or a shared one).
            .env("SEAPATH_SHARED_IMAGE_NAMESPACES", format!("{}/", tb.pool))
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        match tb.secret_uuid {
            Some(uuid) => command.env("SEAPATH_LIBVIRT_SECRET_UUID", uuid.to_string()),
            None => command.env_remove("SEAPATH_LIBVIRT_SECRET_UUID"),
        };
        let spawned = now_us();
        let child = command
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting {BINARY}: {e}"))?;
        let pid = child.id();
        let pidfile = tb.dir.join("pids/operator-bench-controller");
        std::fs::write(&pidfile, format!("{pid}\n"))?;
        Ok(ControllerProcess {
            child,
            pid,
            port,
            log: log.to_owned(),
            spawned,
            pidfile,
        })
    }

    async fn get_metrics(&self) -> anyhow::Result<String> {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok(body)
    }

    /// Waits until /metrics answers.
    pub async fn wait_http(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the controller exited at start ({status}): read {}",
                    self.log.display()
                );
            }
            if self.get_metrics().await.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "the controller's /metrics did not answer within 30 s: read {}",
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `seapath_reconciles_total{kind="VirtualMachine"}`, all results.
    pub async fn reconciles(&self) -> anyhow::Result<u64> {
        let text = self.get_metrics().await?;
        Ok(text
            .lines()
            .filter(|l| l.starts_with("seapath_reconciles_total{") && l.contains(r#"kind="VirtualMachine""#))
            .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.trim().parse::<f64>().ok()))
            .sum::<f64>() as u64)
    }

    /// Stops it with SIGTERM (graceful shutdown), SIGKILL after 15 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the PID of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                eprintln!("bench: the controller did not stop within 15 s of SIGTERM: killing it");
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(&self.pidfile);
        Ok(())
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_file(&self.pidfile);
        }
    }
}

/// One line of the controller's JSON log.
#[derive(Debug)]
pub struct LogLine {
    pub at: Micros,
    pub level: String,
    pub message: String,
    pub vm: Option<String>,
    pub namespace: Option<String>,
    /// The `error` field of a warning.
    pub error: Option<String>,
}

fn parse_time(text: &str) -> Option<Micros> {
    let ts: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    Some(ts.as_microsecond())
}

pub fn read_log(path: &Path) -> anyhow::Result<Vec<LogLine>> {
    let mut lines = Vec::new();
    for line in BufReader::new(File::open(path)?).lines() {
        let line = line?;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let Some(at) = v["timestamp"].as_str().and_then(parse_time) else {
            continue;
        };
        lines.push(LogLine {
            at,
            level: v["level"].as_str().unwrap_or_default().to_owned(),
            message: v["message"].as_str().unwrap_or_default().to_owned(),
            vm: v["vm"].as_str().map(str::to_owned),
            namespace: v["namespace"].as_str().map(str::to_owned),
            error: v["error"].as_str().map(str::to_owned),
        });
    }
    Ok(lines)
}

/// When the storage work of each VM ended (`namespace/name` -> first change line).
pub fn storage_done(lines: &[LogLine]) -> HashMap<String, Micros> {
    let mut out = HashMap::new();
    for l in lines {
        let (Some(vm), Some(ns)) = (&l.vm, &l.namespace) else {
            continue;
        };
        let changed = ["created ", "added ", "wrote metadata", "adopted "]
            .iter()
            .any(|p| l.message.starts_with(p));
        if changed {
            out.entry(format!("{ns}/{vm}")).or_insert(l.at);
        }
    }
    out
}

/// When each VM (by name) was first reconciled (the `reconciled` debug line of `run`).
pub fn first_reconciles(lines: &[LogLine]) -> HashMap<String, Micros> {
    let mut out = HashMap::new();
    for l in lines.iter().filter(|l| l.message == "reconciled") {
        if let Some(vm) = &l.vm {
            out.entry(vm.clone()).or_insert(l.at);
        }
    }
    out
}

/// How many warnings and errors the controller logged (a reader should know of retries).
pub fn problems(lines: &[LogLine]) -> usize {
    lines
        .iter()
        .filter(|l| matches!(l.level.as_str(), "WARN" | "ERROR"))
        .count()
}

/// "N warnings/errors (Kx message: error; ...)": the three most frequent kinds, so that a reader
/// sees which retries cost time.
pub fn problem_summary(lines: &[LogLine]) -> String {
    let mut kinds: HashMap<String, usize> = HashMap::new();
    for l in lines
        .iter()
        .filter(|l| matches!(l.level.as_str(), "WARN" | "ERROR"))
    {
        let error: String = l.error.as_deref().unwrap_or_default().chars().take(90).collect();
        *kinds.entry(format!("{}: {error}", l.message)).or_default() += 1;
    }
    let mut kinds: Vec<(String, usize)> = kinds.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let top: Vec<String> = kinds.iter().take(3).map(|(k, n)| format!("{n}x {k}")).collect();
    format!("{} warnings/errors ({})", problems(lines), top.join("; "))
}
