//! The tables of the migration benchmark and the targets they meet.

use seapath_operator::api::MigrationPolicy;

use crate::moves::{DrainSample, MoveSample};
use crate::report::{Table, percentile, verdict};
use crate::{GuestRun, Options};

/// Targets with their verdicts, in the order they were judged.
#[derive(Default)]
pub struct Targets(pub Vec<(String, bool)>);

impl Targets {
    fn judge(&mut self, what: String, met: bool) -> &'static str {
        self.0.push((what, met));
        verdict(met)
    }
}

/// The downtime libvirt is told to keep to: the VMs' `spec.migration.maxDowntimeMilliseconds`,
/// which the benchmark leaves at its default.
fn max_downtime_ms() -> i64 {
    i64::from(MigrationPolicy::default().max_downtime_milliseconds)
}

fn seconds(us: Option<i64>) -> String {
    us.map_or_else(|| "-".into(), |v| format!("{:.2}", v as f64 / 1e6))
}

fn millis(v: Option<i64>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

fn mib(bytes: Option<i64>) -> String {
    bytes.map_or_else(|| "-".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

/// The drain-parallel the controller ran with: its environment, else its default.
fn drain_parallel() -> String {
    match std::env::var("SEAPATH_DRAIN_PARALLEL") {
        Ok(v) if !v.is_empty() => v,
        _ => format!(
            "{} (default)",
            seapath_operator::controller::drain::DEFAULT_PARALLEL
        ),
    }
}

/// Median and max of the downtimes, judged against the target; "-" when there is none.
fn downtime_cells(downtimes: &[i64], what: &str, targets: &mut Targets) -> [String; 3] {
    let max = downtimes.iter().copied().max();
    let target = match max {
        Some(max) => {
            let met = max <= max_downtime_ms();
            let judged = targets.judge(
                format!(
                    "{what}: every downtime within {} ms (max {max} ms)",
                    max_downtime_ms()
                ),
                met,
            );
            format!("<= {} ms: {judged}", max_downtime_ms())
        }
        None => "-".into(),
    };
    [millis(percentile(downtimes, 50.0)), millis(max), target]
}

fn migration_row(run: &GuestRun, targets: &mut Targets) -> Vec<String> {
    let ok: Vec<&MoveSample> = run.samples.iter().filter(|s| s.succeeded()).collect();
    let totals: Vec<i64> = ok.iter().map(|s| s.total_us).collect();
    let downtimes: Vec<i64> = ok.iter().filter_map(|s| s.status.downtime_milliseconds).collect();
    let bytes: Vec<i64> = ok.iter().filter_map(|s| s.status.bytes_transferred).collect();
    let [down_p50, down_max, target] = downtime_cells(&downtimes, &run.label, targets);
    targets.judge(
        format!(
            "{}: {} of {} migrations succeeded, guest never restarted",
            run.label,
            ok.len(),
            run.samples.len()
        ),
        ok.len() == run.samples.len() && run.same_boot,
    );
    vec![
        run.label.clone(),
        format!("{}/{}", ok.len(), run.samples.len()),
        seconds(percentile(&totals, 50.0)),
        seconds(totals.iter().copied().max()),
        down_p50,
        down_max,
        mib(percentile(&bytes, 50.0)),
        mib(bytes.iter().copied().max()),
        run.dirty_rate.map_or_else(|| "-".into(), |r| format!("{r:.0}")),
        target,
    ]
}

fn failures(run: &GuestRun) -> Vec<String> {
    run.samples
        .iter()
        .filter(|s| !s.succeeded())
        .map(|s| {
            format!(
                "{}: a migration {:?}: {} {}",
                run.label,
                s.status.phase,
                s.status.reason.as_deref().unwrap_or_default(),
                s.status.message.as_deref().unwrap_or_default()
            )
        })
        .collect()
}

pub fn migration_table(opts: &Options, runs: &[GuestRun], targets: &mut Targets) -> Table {
    let mut t = Table::new(
        format!(
            "M1. Live migration between the two QEMU hosts: a {} MiB guest, {} migrations back and forth",
            opts.guest_mib, opts.migrations
        ),
        &[
            "guest",
            "ok",
            "total p50 s",
            "total max s",
            "downtime p50 ms",
            "downtime max ms",
            "sent p50 MiB",
            "sent max MiB",
            "dirtied MiB/s",
            "downtime target",
        ],
    );
    for run in runs {
        t.row(migration_row(run, targets));
    }
    t.note("total: VirtualMachineMigration created -> phase Succeeded seen by the harness (it polls every 20 ms)");
    t.note("downtime and sent: the migration's status (downtimeMilliseconds, bytesTransferred: libvirt's completed-job statistics)");
    t.note(format!(
        "downtime target: libvirt's configured maximum, the VMs' spec.migration.maxDowntimeMilliseconds (default {} ms)",
        max_downtime_ms()
    ));
    t.note(format!(
        "dirtied: the guest rewrites a {} MiB buffer of random data in a tmpfs (seapath.dirty), rate from its passes over 5 s before the migrations",
        opts.dirty_mib
    ));
    for run in runs {
        let spans: Vec<i64> = run
            .samples
            .iter()
            .filter_map(MoveSample::status_seconds)
            .collect();
        t.note(format!(
            "{}: status endTime - startTime p50 {} s (whole seconds); same boot id after every migration: {}",
            run.label,
            millis(percentile(&spans, 50.0)),
            if run.same_boot { "yes" } else { "NO (restarted)" }
        ));
        for failure in failures(run) {
            t.note(failure);
        }
    }
    t
}

fn drain_row(label: &str, opts: &Options, sample: &DrainSample, targets: &mut Targets) -> Vec<String> {
    let modes: Vec<String> = sample.modes.iter().map(|(m, n)| format!("{n} {m}")).collect();
    let [down_p50, down_max, target] =
        downtime_cells(&sample.downtimes_ms, &format!("drain, {label}"), targets);
    vec![
        label.to_owned(),
        opts.drain_vms.to_string(),
        drain_parallel(),
        seconds(Some(sample.wall_us)),
        seconds(Some(sample.wall_us / opts.drain_vms as i64)),
        modes.join(", "),
        sample.failures.len().to_string(),
        down_p50,
        down_max,
        target,
    ]
}

pub fn drain_table(
    opts: &Options,
    live: &DrainSample,
    stop_start: &DrainSample,
    targets: &mut Targets,
) -> Table {
    let mut t = Table::new(
        format!(
            "M2. Drain of a host running {} VMs ({} MiB each, idle guests)",
            opts.drain_vms, opts.drain_vm_mib
        ),
        &[
            "move",
            "VMs",
            "drain-parallel",
            "wall s",
            "wall/VM s",
            "migrations",
            "failed",
            "downtime p50 ms",
            "downtime max ms",
            "downtime target",
        ],
    );
    t.row(drain_row("live", opts, live, targets));
    t.row(drain_row("stop and start (back)", opts, stop_start, targets));
    t.note("wall: spec.drain: true set -> status.drain.phase Drained and every VM Started with Ready=True on the other host (the harness polls every 20 ms)");
    for (label, sample) in [("live", live), ("stop and start", stop_start)] {
        for failure in &sample.failures {
            t.note(format!("{label}: failed migration {failure}"));
        }
    }
    t.note("migrations: the drain's VirtualMachineMigrations by status.mode (unknown: failed before a mode was chosen); a failed move is retried");
    t.note("stop and start: the same VMs with spec.migration.live: false; the guest's init ignores ACPI shutdown, so each stop waits for stopTimeoutSeconds (2 s) before the destroy");
    t
}
