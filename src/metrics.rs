//! Prometheus metrics of the operator, exposed in OpenMetrics text format on `/metrics`
//! (see [`crate::http`]).
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `seapath_reconciles_total` | counter | `kind`, `result` (`ok` or `error`) |
//! | `seapath_reconcile_errors_total` | counter | `kind`, `reason` |
//! | `seapath_reconcile_duration_seconds` | histogram (1 ms .. 30 s) | `kind` |
//! | `seapath_vms` | gauge | `phase` |
//! | `seapath_ceph_write_calls_total` | counter | `op` |
//! | `seapath_libvirt_write_calls_total` | counter | `op` |
//! | `seapath_operations_total` | counter | `kind`, `operation`, `result` |
//!
//! Label values must have a low cardinality: kinds, error variant names, operation names —
//! never object names or error messages.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// Upper bounds (seconds) of the reconcile duration histogram buckets: 1 ms to 30 s.
pub const RECONCILE_DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Content type of [`Metrics::encode`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindResult {
    kind: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindReason {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    kind: String,
    operation: String,
    result: String,
}

#[derive(Clone)]
struct DurationHistogram;

impl MetricConstructor<Histogram> for DurationHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(RECONCILE_DURATION_BUCKETS)
    }
}

struct Inner {
    registry: Registry,
    reconciles: Family<KindResult, Counter>,
    reconcile_errors: Family<KindReason, Counter>,
    reconcile_duration: Family<KindLabel, Histogram, DurationHistogram>,
    vms: Family<PhaseLabel, Gauge>,
    /// Phases ever reported to [`Metrics::set_vm_phases`], so that vanished ones go to 0.
    vm_phases_seen: Mutex<BTreeSet<String>>,
    ceph_writes: Family<OpLabel, Counter>,
    ceph_writes_sum: AtomicU64,
    libvirt_writes: Family<OpLabel, Counter>,
    libvirt_writes_sum: AtomicU64,
    operations: Family<OperationLabels, Counter>,
}

/// The operator's metrics. Cloning is cheap (one `Arc`); all clones update the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates a registry with all the operator's metrics (prefix `seapath_`).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("seapath");
        let reconciles = Family::<KindResult, Counter>::default();
        registry.register(
            "reconciles",
            "Reconciliations finished, by kind and result (ok or error)",
            reconciles.clone(),
        );
        let reconcile_errors = Family::<KindReason, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciliations, by kind and error reason",
            reconcile_errors.clone(),
        );
        let reconcile_duration = Family::new_with_constructor(DurationHistogram);
        registry.register_with_unit(
            "reconcile_duration",
            "Duration of reconciliations, by kind",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        let vms = Family::<PhaseLabel, Gauge>::default();
        registry.register("vms", "Virtual machines, by phase", vms.clone());
        let ceph_writes = Family::<OpLabel, Counter>::default();
        registry.register(
            "ceph_write_calls",
            "Mutating calls made to Ceph (librados/librbd), by operation",
            ceph_writes.clone(),
        );
        let libvirt_writes = Family::<OpLabel, Counter>::default();
        registry.register(
            "libvirt_write_calls",
            "Mutating calls made to libvirt, by operation",
            libvirt_writes.clone(),
        );
        let operations = Family::<OperationLabels, Counter>::default();
        registry.register(
            "operations",
            "Operations (snapshot, restore, purge, ...) by resource kind, operation and result",
            operations.clone(),
        );
        Self {
            inner: Arc::new(Inner {
                registry,
                reconciles,
                reconcile_errors,
                reconcile_duration,
                vms,
                vm_phases_seen: Mutex::new(BTreeSet::new()),
                ceph_writes,
                ceph_writes_sum: AtomicU64::new(0),
                libvirt_writes,
                libvirt_writes_sum: AtomicU64::new(0),
                operations,
            }),
        }
    }

    /// Starts timing one reconciliation of `kind`. Finish it with [`ReconcileTimer::ok`] or
    /// [`ReconcileTimer::error`].
    pub fn reconcile_timer(&self, kind: &'static str) -> ReconcileTimer {
        ReconcileTimer {
            metrics: self.clone(),
            kind,
            start: Instant::now(),
            finished: false,
        }
    }

    /// Sets `seapath_vms{phase}` from a complete count by phase. Phases reported earlier but
    /// absent from `counts` are set to 0 (not removed, so that graphs drop to zero).
    pub fn set_vm_phases(&self, counts: &BTreeMap<String, i64>) {
        let mut seen = self
            .inner
            .vm_phases_seen
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for phase in seen.iter() {
            if !counts.contains_key(phase) {
                self.inner
                    .vms
                    .get_or_create(&PhaseLabel { phase: phase.clone() })
                    .set(0);
            }
        }
        for (phase, count) in counts {
            self.inner
                .vms
                .get_or_create(&PhaseLabel { phase: phase.clone() })
                .set(*count);
            seen.insert(phase.clone());
        }
    }

    /// Current value of `seapath_vms{phase}` (0 if never set).
    pub fn vms_in_phase(&self, phase: &str) -> i64 {
        self.inner
            .vms
            .get(&PhaseLabel {
                phase: phase.to_owned(),
            })
            .map_or(0, |gauge| gauge.get())
    }

    /// Counts one mutating call to Ceph (`op`: `create_image`, `resize`, `snap_create`, ...).
    pub fn ceph_write(&self, op: &str) {
        self.inner
            .ceph_writes
            .get_or_create(&OpLabel { op: op.to_owned() })
            .inc();
        self.inner.ceph_writes_sum.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one mutating call to libvirt (`op`: `define`, `start`, `destroy`, ...).
    pub fn libvirt_write(&self, op: &str) {
        self.inner
            .libvirt_writes
            .get_or_create(&OpLabel { op: op.to_owned() })
            .inc();
        self.inner.libvirt_writes_sum.fetch_add(1, Ordering::Relaxed);
    }

    /// Total of `seapath_ceph_write_calls_total` over all operations.
    pub fn ceph_write_calls(&self) -> u64 {
        self.inner.ceph_writes_sum.load(Ordering::Relaxed)
    }

    /// Total of `seapath_libvirt_write_calls_total` over all operations.
    pub fn libvirt_write_calls(&self) -> u64 {
        self.inner.libvirt_writes_sum.load(Ordering::Relaxed)
    }

    /// Value of `seapath_ceph_write_calls_total{op}`.
    pub fn ceph_write_calls_for(&self, op: &str) -> u64 {
        self.inner
            .ceph_writes
            .get(&OpLabel { op: op.to_owned() })
            .map_or(0, |counter| counter.get())
    }

    /// Value of `seapath_libvirt_write_calls_total{op}`.
    pub fn libvirt_write_calls_for(&self, op: &str) -> u64 {
        self.inner
            .libvirt_writes
            .get(&OpLabel { op: op.to_owned() })
            .map_or(0, |counter| counter.get())
    }

    /// Counts one operation: `kind` (e.g. `VmSnapshot`), `operation` (`snapshot`, `restore`,
    /// `purge`, ...), `result` (`ok`, `error`, ...).
    pub fn operation(&self, kind: &str, operation: &str, result: &str) {
        self.inner
            .operations
            .get_or_create(&OperationLabels {
                kind: kind.to_owned(),
                operation: operation.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }

    /// Value of `seapath_operations_total{kind,operation,result}`.
    pub fn operations(&self, kind: &str, operation: &str, result: &str) -> u64 {
        self.inner
            .operations
            .get(&OperationLabels {
                kind: kind.to_owned(),
                operation: operation.to_owned(),
                result: result.to_owned(),
            })
            .map_or(0, |counter| counter.get())
    }

    /// Value of `seapath_reconciles_total{kind,result}`.
    pub fn reconciles(&self, kind: &str, result: &str) -> u64 {
        self.inner
            .reconciles
            .get(&KindResult {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .map_or(0, |counter| counter.get())
    }

    /// Value of `seapath_reconcile_errors_total{kind,reason}`.
    pub fn reconcile_errors(&self, kind: &str, reason: &str) -> u64 {
        self.inner
            .reconcile_errors
            .get(&KindReason {
                kind: kind.to_owned(),
                reason: reason.to_owned(),
            })
            .map_or(0, |counter| counter.get())
    }

    /// All metrics in OpenMetrics text format (ends with `# EOF`); serve it with
    /// [`OPENMETRICS_CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)
            .expect("writing to a String cannot fail");
        out
    }

    fn finish_reconcile(&self, kind: &str, elapsed: f64, outcome: Option<Result<(), &str>>) {
        self.inner
            .reconcile_duration
            .get_or_create(&KindLabel {
                kind: kind.to_owned(),
            })
            .observe(elapsed);
        let result = match outcome {
            None => return,
            Some(Ok(())) => "ok",
            Some(Err(reason)) => {
                self.inner
                    .reconcile_errors
                    .get_or_create(&KindReason {
                        kind: kind.to_owned(),
                        reason: reason.to_owned(),
                    })
                    .inc();
                "error"
            }
        };
        self.inner
            .reconciles
            .get_or_create(&KindResult {
                kind: kind.to_owned(),
                result: result.to_owned(),
            })
            .inc();
    }
}

/// Times one reconciliation; created by [`Metrics::reconcile_timer`].
///
/// - [`ok`](Self::ok): records the duration and `seapath_reconciles_total{result="ok"}`;
/// - [`error`](Self::error): records the duration, `seapath_reconciles_total{result="error"}`
///   and `seapath_reconcile_errors_total{reason}`;
/// - dropped unfinished (the reconcile future was cancelled, e.g. on shutdown or loss of
///   leadership, or a `?` returned early without calling `error`): records the duration only.
///   A cancelled reconciliation is neither a success nor a failure, and counting it as an error
///   would raise error-rate alerts on every leader change.
#[must_use = "finish the timer with .ok() or .error(reason)"]
pub struct ReconcileTimer {
    metrics: Metrics,
    kind: &'static str,
    start: Instant,
    finished: bool,
}

impl ReconcileTimer {
    /// Records a successful reconciliation.
    pub fn ok(mut self) {
        self.finish(Ok(()));
    }

    /// Records a failed reconciliation; `reason` is a low-cardinality label (an error variant
    /// name such as `CephUnavailable`, never an error message).
    pub fn error(mut self, reason: &str) {
        self.finish(Err(reason));
    }

    fn finish(&mut self, outcome: Result<(), &str>) {
        self.finished = true;
        self.metrics
            .finish_reconcile(self.kind, self.start.elapsed().as_secs_f64(), Some(outcome));
    }
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        if !self.finished {
            self.metrics
                .finish_reconcile(self.kind, self.start.elapsed().as_secs_f64(), None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_value(text: &str, prefix: &str) -> Option<String> {
        text.lines()
            .find(|line| line.starts_with(prefix))
            .map(|line| line[prefix.len()..].trim().to_owned())
    }

    /// `seapath_reconcile_duration_seconds_count{kind}` read from the encoded text.
    fn durations_recorded(metrics: &Metrics, kind: &str) -> u64 {
        let prefix = format!(r#"seapath_reconcile_duration_seconds_count{{kind="{kind}"}}"#);
        line_value(&metrics.encode(), &prefix).map_or(0, |value| value.parse().unwrap())
    }

    #[test]
    fn timer_ok_and_error() {
        let metrics = Metrics::new();
        metrics.reconcile_timer("VirtualMachine").ok();
        metrics.reconcile_timer("VirtualMachine").ok();
        metrics.reconcile_timer("VirtualMachine").error("CephUnavailable");
        assert_eq!(metrics.reconciles("VirtualMachine", "ok"), 2);
        assert_eq!(metrics.reconciles("VirtualMachine", "error"), 1);
        assert_eq!(metrics.reconcile_errors("VirtualMachine", "CephUnavailable"), 1);
        assert_eq!(durations_recorded(&metrics, "VirtualMachine"), 3);

        let text = metrics.encode();
        assert_eq!(
            line_value(
                &text,
                r#"seapath_reconciles_total{kind="VirtualMachine",result="ok"}"#
            )
            .as_deref(),
            Some("2")
        );
        assert_eq!(
            line_value(
                &text,
                r#"seapath_reconcile_errors_total{kind="VirtualMachine",reason="CephUnavailable"}"#
            )
            .as_deref(),
            Some("1")
        );
        assert_eq!(
            line_value(
                &text,
                r#"seapath_reconcile_duration_seconds_count{kind="VirtualMachine"}"#
            )
            .as_deref(),
            Some("3")
        );
    }

    #[test]
    fn dropped_timer_records_only_the_duration() {
        let metrics = Metrics::new();
        {
            let _timer = metrics.reconcile_timer("VmSnapshot");
        }
        assert_eq!(durations_recorded(&metrics, "VmSnapshot"), 1);
        assert_eq!(metrics.reconciles("VmSnapshot", "ok"), 0);
        assert_eq!(metrics.reconciles("VmSnapshot", "error"), 0);
    }

    #[test]
    fn histogram_buckets_span_1ms_to_30s() {
        let metrics = Metrics::new();
        metrics.reconcile_timer("VirtualMachine").ok();
        let text = metrics.encode();
        assert!(
            text.contains(r#"seapath_reconcile_duration_seconds_bucket{le="0.001",kind="VirtualMachine"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"seapath_reconcile_duration_seconds_bucket{le="30.0",kind="VirtualMachine"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"seapath_reconcile_duration_seconds_bucket{le="+Inf",kind="VirtualMachine"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("# UNIT seapath_reconcile_duration_seconds seconds"),
            "{text}"
        );
    }

    #[test]
    fn vanished_phases_go_to_zero() {
        let metrics = Metrics::new();
        metrics.set_vm_phases(&BTreeMap::from([
            ("Running".to_owned(), 3),
            ("Stopped".to_owned(), 1),
        ]));
        assert_eq!(metrics.vms_in_phase("Running"), 3);
        assert_eq!(metrics.vms_in_phase("Stopped"), 1);

        metrics.set_vm_phases(&BTreeMap::from([("Running".to_owned(), 4)]));
        assert_eq!(metrics.vms_in_phase("Running"), 4);
        assert_eq!(metrics.vms_in_phase("Stopped"), 0);
        let text = metrics.encode();
        assert!(text.contains(r#"seapath_vms{phase="Stopped"} 0"#), "{text}");
        assert!(text.contains(r#"seapath_vms{phase="Running"} 4"#), "{text}");

        metrics.set_vm_phases(&BTreeMap::new());
        assert_eq!(metrics.vms_in_phase("Running"), 0);
    }

    #[test]
    fn write_call_counters() {
        let metrics = Metrics::new();
        assert_eq!(metrics.ceph_write_calls(), 0);
        assert_eq!(metrics.libvirt_write_calls(), 0);
        metrics.ceph_write("create_image");
        metrics.ceph_write("create_image");
        metrics.ceph_write("resize");
        metrics.libvirt_write("define");
        let clone = metrics.clone();
        clone.libvirt_write("start");
        assert_eq!(metrics.ceph_write_calls(), 3);
        assert_eq!(metrics.ceph_write_calls_for("create_image"), 2);
        assert_eq!(metrics.ceph_write_calls_for("snap_remove"), 0);
        assert_eq!(metrics.libvirt_write_calls(), 2);
        assert_eq!(metrics.libvirt_write_calls_for("start"), 1);
        let text = metrics.encode();
        assert!(
            text.contains(r#"seapath_ceph_write_calls_total{op="create_image"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"seapath_libvirt_write_calls_total{op="define"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn operations_counter() {
        let metrics = Metrics::new();
        metrics.operation("VmSnapshot", "snapshot", "ok");
        metrics.operation("VmSnapshot", "snapshot", "ok");
        metrics.operation("VmRestore", "restore", "error");
        assert_eq!(metrics.operations("VmSnapshot", "snapshot", "ok"), 2);
        assert_eq!(metrics.operations("VmRestore", "restore", "error"), 1);
        assert_eq!(metrics.operations("VmRestore", "restore", "ok"), 0);
        let text = metrics.encode();
        assert!(
            text.contains(
                r#"seapath_operations_total{kind="VmSnapshot",operation="snapshot",result="ok"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn encoding_is_openmetrics() {
        let metrics = Metrics::new();
        // Families without any series are not encoded at all.
        assert_eq!(metrics.encode(), "# EOF\n");
        metrics.reconcile_timer("VirtualMachine").error("Conflict");
        metrics.set_vm_phases(&BTreeMap::from([("Running".to_owned(), 1)]));
        metrics.ceph_write("create_image");
        metrics.libvirt_write("define");
        metrics.operation("VmSnapshot", "purge", "ok");
        let text = metrics.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for name in [
            "seapath_reconciles",
            "seapath_reconcile_errors",
            "seapath_reconcile_duration_seconds",
            "seapath_vms",
            "seapath_ceph_write_calls",
            "seapath_libvirt_write_calls",
            "seapath_operations",
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
    }
}
