#!/usr/bin/env bash
# The benchmark harness: builds `cargo bench --bench operator` (benches/operator.rs), brings up
# its own test bed, runs the measurements against it, takes it down, and prints the tables.
#
#   bench/run.sh [--no-slow-mon] [harness options, e.g. --quick; see --help]
#
# 1. test bed "bench" (mon with a 0.05 s paxos interval, as every test bed): apply -> Started
#    latency (1 VM, 100 VMs) against the floor, the no-op resync of 500 VMs, idle CPU and RSS,
#    the qcow2 import and the golden clones;
# 2. test bed "bench-slowmon" (SEAPATH_CEPH_SLOW_MON=1: Ceph's default 1 s paxos interval): the
#    1-VM latency and its floor again. Skip it with --no-slow-mon.
#
# The report is printed and kept in target/bench/report-DATE.txt, the logs of each phase
# (controller JSON logs, the harness's own log) in target/bench/logs-*/.
# Environment: SEAPATH_BENCH_INSTANCE (default bench) names the test beds.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib/common.sh
source hack/lib/common.sh

slow_mon=1
args=()
for arg in "$@"; do
  case $arg in
    --no-slow-mon) slow_mon=0 ;;
    -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$arg") ;;
  esac
done

instance=${SEAPATH_BENCH_INSTANCE:-bench}
command -v cargo >/dev/null || die "cargo is not installed: install Rust 1.89 or newer with rustup (https://rustup.rs) and rerun"
apt_ensure libclang-dev clang pkg-config librbd-dev librados-dev libvirt-dev qemu-utils qemu-block-extra

log "building the harness and the controller (release)"
cargo bench --bench operator --no-run --quiet

out=target/bench
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
report="$out/report-$stamp.txt"
: >"$report"
started=$(date +%s)

# Brings up test bed $1, runs phase $2 of the harness against it, takes it down.
run_phase() {
  local name=$1 phase=$2
  shift 2
  local logs="$PWD/$out/logs-$stamp-$phase"
  mkdir -p "$logs"
  # The memstore OSD keeps what is written in RAM; the import and clones write about 1.5 GiB.
  SEAPATH_CEPH_MEMSTORE_BYTES=${SEAPATH_CEPH_MEMSTORE_BYTES:-8589934592} \
    hack/testbed.sh up --instance "$name" --hypervisors 2
  trap 'hack/testbed.sh down --instance "'"$name"'" >/dev/null 2>&1 || true' EXIT
  local rc=0
  (
    eval "$(hack/testbed.sh env --instance "$name")"
    cargo bench --bench operator --quiet -- --phase "$phase" --workdir "$logs" "$@"
  ) | tee -a "$report" || rc=$?
  hack/testbed.sh down --instance "$name"
  trap - EXIT
  return "$rc"
}

run_phase "$instance" main "${args[@]}"
if [ "$slow_mon" = 1 ]; then
  echo >>"$report"
  # Only the sample count matters to the slow-mon phase; other options are the main phase's.
  slow_args=()
  for a in "${args[@]}"; do
    [ "$a" = --quick ] && slow_args+=(--samples 3)
  done
  SEAPATH_CEPH_SLOW_MON=1 run_phase "$instance-slowmon" slow-mon "${slow_args[@]}"
fi
log "benchmark finished in $(( $(date +%s) - started )) s; report: $report"
