//! Runs a property with proptest, briefly by default (CI) or for a given time on demand.
//!
//! - Default: `default_cases` cases (or `PROPTEST_CASES` when set).
//! - Long mode: `SEAPATH_PROPTEST_MINUTES=10` runs batches of cases until the time is up
//!   (`hack/proptest.sh [minutes]` sets it for the XML and admission property tests).
//!
//! Either way the number of cases run and their rate are printed (`--nocapture` shows them).
//! A failing case is shrunk and reported by the panic message; no failure file is written.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// The long mode's duration, from `SEAPATH_PROPTEST_MINUTES`.
pub fn long_mode() -> Option<Duration> {
    let minutes: f64 = std::env::var("SEAPATH_PROPTEST_MINUTES")
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (minutes > 0.0).then(|| Duration::from_secs_f64(minutes * 60.0))
}

/// Cases of the short mode: `PROPTEST_CASES`, or `default_cases`.
fn short_cases(default_cases: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default_cases)
}

/// Runs `test` on values of `strategy` (see the module); returns the number of cases run.
pub fn run<S: Strategy>(
    name: &str,
    default_cases: u32,
    batch: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u64 {
    let deadline = long_mode().map(|d| Instant::now() + d);
    let start = Instant::now();
    let mut total = 0u64;
    loop {
        let cases = if deadline.is_some() {
            batch
        } else {
            short_cases(default_cases)
        };
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 4096,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        if let Err(failure) = runner.run(&strategy, &test) {
            panic!("property {name} failed after {total} earlier cases: {failure}");
        }
        total += u64::from(cases);
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "proptest {name}: {total} cases in {secs:.1} s ({:.1} cases/s)",
        total as f64 / secs.max(1e-9)
    );
    total
}
