//! Live migration of a domain to another libvirt host, peer to peer: the source libvirtd
//! connects to the target's and carries the migration to its end by itself, so it completes
//! or fails cleanly even when the caller dies half way. Once the guest runs on the target it
//! is persistent there and undefined here: at no moment do both hosts run it.

use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use virt::domain::MigrateParameters;
use virt::sys;

use super::error::{Error, Operation, Result};
use super::{Domain, Hypervisor, ffi};

/// How often a running migration is looked at (downtime limit, timeout, cancellation).
const WATCH_INTERVAL: Duration = Duration::from_millis(50);

/// What a live migration is asked to do.
pub struct LiveMigration<'a> {
    /// libvirt URI of the target host, as its libvirtd is reached from this one.
    pub target_uri: &'a str,
    /// The longest pause of the guest at the switch-over.
    pub max_downtime: Duration,
    /// Past this, the migration is aborted and the guest keeps running here.
    pub timeout: Duration,
    /// Asked while the migration runs: true aborts it.
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
}

/// libvirt's figures of a completed migration, read on the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MigrationStats {
    /// How long the guest was paused.
    pub downtime: Option<Duration>,
    /// Bytes sent (memory and device state).
    pub bytes: Option<u64>,
}

/// Why a migration was aborted before libvirt finished it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Abort {
    TimedOut,
    Cancelled,
}

impl Domain {
    /// Live-migrates the running domain to `migration.target_uri` and blocks until it runs
    /// there, or until libvirt gives up (the guest then keeps running here). The downtime
    /// limit is set once libvirt has started the job (it belongs to the job).
    pub fn migrate_live(&self, migration: &LiveMigration<'_>) -> Result<MigrationStats> {
        if self.job_running() && self.outlived_job(migration.timeout)? {
            // A migration started before (by an agent that died since) carried the guest away.
            return Ok(completed_stats(migration.target_uri, self.name()));
        }
        let flags = sys::VIR_MIGRATE_LIVE
            | sys::VIR_MIGRATE_PEER2PEER
            | sys::VIR_MIGRATE_PERSIST_DEST
            | sys::VIR_MIGRATE_UNDEFINE_SOURCE
            | sys::VIR_MIGRATE_ABORT_ON_ERROR;
        let started = Instant::now();
        let (done, finished) = mpsc::channel();
        let outcome = thread::scope(|scope| {
            scope.spawn(|| {
                let result = self.inner.migrate_to_uri3(
                    Some(migration.target_uri),
                    MigrateParameters::default(),
                    flags,
                );
                let _ = done.send(result);
            });
            let mut downtime_set = false;
            let mut aborted = None;
            loop {
                match finished.recv_timeout(WATCH_INTERVAL) {
                    Ok(result) => return result.map_err(|e| (e, aborted)),
                    Err(mpsc::RecvTimeoutError::Disconnected) => unreachable!("the migration thread sends"),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                }
                if !downtime_set && self.job_running() {
                    downtime_set = self.set_max_downtime(migration.max_downtime).is_ok();
                }
                let why = if (migration.cancelled)() {
                    Some(Abort::Cancelled)
                } else if started.elapsed() > migration.timeout {
                    Some(Abort::TimedOut)
                } else {
                    None
                };
                if aborted.is_none()
                    && let Some(why) = why
                {
                    // An abort that comes too late (the guest already switched over) fails
                    // and the migration completes: that is the outcome reported.
                    if ffi::abort_job(&self.inner).is_ok() {
                        aborted = Some(why);
                    }
                }
            }
        });
        match outcome {
            Ok(()) => Ok(completed_stats(migration.target_uri, self.name())),
            Err((e, aborted)) => {
                let err = self.err(Operation::Migrate, e);
                Err(match aborted {
                    Some(Abort::TimedOut) => Error::invalid(
                        Operation::Migrate,
                        err.target().clone(),
                        self.uri(),
                        format!(
                            "aborted after the migration timeout of {} s ({})",
                            migration.timeout.as_secs(),
                            err.message()
                        ),
                    ),
                    Some(Abort::Cancelled) => Error::invalid(
                        Operation::Migrate,
                        err.target().clone(),
                        self.uri(),
                        format!("cancelled ({})", err.message()),
                    ),
                    None => err,
                })
            }
        }
    }

    /// Waits for the domain's current job (a migration started before) to end; true when the
    /// domain is gone from this host with it. Past `timeout` the job is aborted.
    fn outlived_job(&self, timeout: Duration) -> Result<bool> {
        let deadline = Instant::now() + timeout;
        while self.job_running() {
            if Instant::now() > deadline {
                let _ = ffi::abort_job(&self.inner);
            }
            thread::sleep(WATCH_INTERVAL);
        }
        match self.state() {
            Ok(_) => Ok(false),
            Err(e) if e.is_no_domain() => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// Whether libvirt runs a job on the domain (a migration once it started).
    fn job_running(&self) -> bool {
        self.inner
            .job_info()
            .is_ok_and(|job| job.r#type != sys::VIR_DOMAIN_JOB_NONE as i32)
    }

    fn set_max_downtime(&self, downtime: Duration) -> Result<()> {
        let millis = u64::try_from(downtime.as_millis()).unwrap_or(u64::MAX);
        self.inner
            .migrate_set_max_downtime(millis, 0)
            .map_err(|e| self.err(Operation::Job, e))
    }
}

/// The target's record of the migration that just completed (best effort: the guest runs
/// there whatever this finds).
fn completed_stats(target_uri: &str, name: &str) -> MigrationStats {
    let read = || -> Result<MigrationStats> {
        Hypervisor::connect(target_uri)?
            .lookup_domain(name)?
            .completed_migration_stats()
    };
    read().unwrap_or_default()
}

impl Domain {
    /// libvirt's figures of the last migration of this domain, on either side (the source
    /// sends them to the target with the guest).
    pub fn completed_migration_stats(&self) -> Result<MigrationStats> {
        let (downtime, bytes) =
            ffi::completed_job_stats(&self.inner).map_err(|e| self.err(Operation::Job, e))?;
        Ok(MigrationStats {
            downtime: downtime.map(Duration::from_millis),
            bytes,
        })
    }
}
