#!/usr/bin/env bash
# The benchmark harness: builds the benchmark programs (benches/operator.rs,
# benches/snapshots.rs, benches/migration.rs), brings up a test bed for each phase, runs the
# measurements against it, takes it down, and prints the tables.
#
#   bench/run.sh [--no-slow-mon] [--snapshots-only | --no-snapshots | --failover-only]
#                [--migration-only | --no-migration] [options, e.g. --quick]
#
# 1. test bed "bench" (mon with a 0.05 s paxos interval, as every test bed): apply -> Started
#    latency (1 VM, 100 VMs) against the floor, the no-op resync of 500 VMs, idle CPU and RSS,
#    the qcow2 import and the golden clones, and last the failover (a host's agent killed, its
#    1 then 50 VMs started on another host, default timings);
# 2. test bed "bench-slowmon" (SEAPATH_CEPH_SLOW_MON=1: Ceph's default 1 s paxos interval): the
#    1-VM latency and its floor, and the failover again. Skip it with --no-slow-mon;
# 3. test bed "bench-snap": snapshot create, restore and purge (1000 snapshots) through the
#    operator against librbd and the rbd CLI. Skip it with --no-snapshots; only it with
#    --snapshots-only. Its options --snapshots N, --vms N, --restores N, --skip-cli go to it.
# 4. test bed "bench-mig" (--with-qemu: two private libvirtd hosts running real QEMU guests):
#    live migration of an idle and of a memory-dirtying guest back and forth (total time,
#    libvirt's downtime, bytes sent), and the drain of a host running 20 VMs, live against stop
#    and start. Skip it with --no-migration; only it with --migration-only. Its options
#    --migrations N, --dirty-mib N, --drain-vms N, --skip-drain go to it.
#
# --failover-only: only the failover, in phases 1 and 2 (no snapshot or migration phase);
# --failover-vms N (VMs of its second case, 50) and --skip-failover go to phases 1 and 2.
# --quick goes to every phase; other options to phase 1 (see cargo bench --bench operator --
# --help, and the same for snapshots and migration).
# The report is printed and kept in target/bench/report-DATE.txt, the logs of each phase
# (controller JSON logs, the harness's own log) in target/bench/logs-*/.
# Environment: SEAPATH_BENCH_INSTANCE (default bench) names the test beds.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib/common.sh
source hack/lib/common.sh

slow_mon=1
operator=1
snapshots=1
migration=1
args=()
# Options of the slow-mon phase, which runs only the 1-VM latency and the failover.
slow_args=()
snap_args=()
mig_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --no-slow-mon) slow_mon=0 ;;
    --no-snapshots) snapshots=0 ;;
    --snapshots-only) operator=0; slow_mon=0; migration=0 ;;
    --no-migration) migration=0 ;;
    --migration-only) operator=0; slow_mon=0; snapshots=0 ;;
    --failover-only) snapshots=0; migration=0; args+=("$1"); slow_args+=("$1") ;;
    --snapshots|--vms|--restores)
      [ $# -ge 2 ] || die "$1 needs a value"
      snap_args+=("$1" "$2"); shift ;;
    --migrations|--dirty-mib|--drain-vms)
      [ $# -ge 2 ] || die "$1 needs a value"
      mig_args+=("$1" "$2"); shift ;;
    --skip-drain) mig_args+=("$1") ;;
    --failover-vms)
      [ $# -ge 2 ] || die "$1 needs a value"
      args+=("$1" "$2"); slow_args+=("$1" "$2"); shift ;;
    --skip-failover) args+=("$1"); slow_args+=("$1") ;;
    --skip-cli) snap_args+=("$1") ;;
    --quick) args+=("$1"); slow_args+=("$1"); snap_args+=("$1"); mig_args+=("$1") ;;
    -h|--help) sed -n '2,30p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1") ;;
  esac
  shift
done
[ "$operator" = 1 ] || [ "$snapshots" = 1 ] || [ "$migration" = 1 ] ||
  die "the --*-only and --no-* options given leave nothing to run"

instance=${SEAPATH_BENCH_INSTANCE:-bench}
command -v cargo >/dev/null || die "cargo is not installed: install Rust 1.89 or newer with rustup (https://rustup.rs) and rerun"
apt_ensure libclang-dev clang pkg-config librbd-dev librados-dev libvirt-dev qemu-utils qemu-block-extra

benches=()
[ "$operator" = 1 ] && benches+=(--bench operator)
[ "$snapshots" = 1 ] && benches+=(--bench snapshots)
[ "$migration" = 1 ] && benches+=(--bench migration)
log "building the harness and the controller (release)"
cargo bench "${benches[@]}" --no-run --quiet

out=target/bench
mkdir -p "$out"
stamp=$(date +%Y%m%d-%H%M%S)
report="$out/report-$stamp.txt"
: >"$report"
started=$(date +%s)

# Brings up test bed $1, runs benchmark program $2 against it with the remaining arguments
# (logs in logs-DATE-$3), takes it down. With BENCH_WITH_QEMU=1 the test bed has real QEMU
# hosts (--with-qemu).
run_phase() {
  local name=$1 bench=$2 tag=$3
  shift 3
  local logs="$PWD/$out/logs-$stamp-$tag"
  mkdir -p "$logs"
  local up=(--instance "$name" --hypervisors 2)
  [ "${BENCH_WITH_QEMU:-0}" = 1 ] && up+=(--with-qemu)
  # The memstore OSD keeps what is written in RAM; the import and clones write about 1.5 GiB.
  SEAPATH_CEPH_MEMSTORE_BYTES=${SEAPATH_CEPH_MEMSTORE_BYTES:-8589934592} \
    hack/testbed.sh up "${up[@]}"
  trap 'hack/testbed.sh down --instance "'"$name"'" >/dev/null 2>&1 || true' EXIT
  local rc=0
  (
    eval "$(hack/testbed.sh env --instance "$name")"
    cargo bench --bench "$bench" --quiet -- --workdir "$logs" "$@"
  ) | tee -a "$report" || rc=$?
  hack/testbed.sh down --instance "$name"
  trap - EXIT
  return "$rc"
}

if [ "$operator" = 1 ]; then
  run_phase "$instance" operator main --phase main "${args[@]}"
fi
if [ "$slow_mon" = 1 ]; then
  echo >>"$report"
  SEAPATH_CEPH_SLOW_MON=1 run_phase "$instance-slowmon" operator slow-mon --phase slow-mon "${slow_args[@]}"
fi
if [ "$snapshots" = 1 ]; then
  [ -s "$report" ] && echo >>"$report"
  run_phase "$instance-snap" snapshots snapshots "${snap_args[@]}"
fi
if [ "$migration" = 1 ]; then
  [ -s "$report" ] && echo >>"$report"
  BENCH_WITH_QEMU=1 run_phase "$instance-mig" migration migration "${mig_args[@]}"
fi
log "benchmark finished in $(( $(date +%s) - started )) s; report: $report"
