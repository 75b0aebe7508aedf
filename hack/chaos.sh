#!/usr/bin/env bash
# The long fault campaign (tests/chaos.rs): SIGKILLs the controller and the agents at random,
# seeded points during a workload of imports, clones, snapshots, restores, deletions, purges and
# state changes, then checks the invariants (final phases, no orphan in Ceph, nothing lost, no VM
# on two hypervisors, no panic). CI runs a short campaign with `cargo test`; this runs a long one.
#
#   hack/chaos.sh [--kills N] [--seed N] [--current] [--logs DIR]
#
# --kills N   kill points (default 300)
# --seed N    seed of the workload and the kill points (default: random, printed; a failing seed
#             replays with --seed)
# --current   use the test bed loaded in this shell (eval "$(hack/testbed.sh env ...)") instead
#             of bringing up a private one (instance chaos-PID, taken down at the end)
# --logs DIR  keep the controller's and agents' logs there (default: a directory under /tmp)
#
# Prints the figures: kill points (per process), operations (per kind), violations, duration.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib/common.sh
source hack/lib/common.sh

kills=300
seed=""
current=false
logs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --kills) kills="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    --current) current=true; shift ;;
    --logs) logs="$2"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
[ -n "$seed" ] || seed=$(( RANDOM << 15 | RANDOM ))
[ -n "$logs" ] || logs=$(mktemp -d /tmp/seapath-chaos-logs.XXXXXX)

if [ "$current" = true ]; then
  if [ -z "${KUBECONFIG:-}" ] || [ -z "${CEPH_CONF:-}" ] || [ -z "${SEAPATH_LIBVIRT_NODES:-}" ]; then
    die "--current: no test bed loaded (eval \"\$(hack/testbed.sh env --instance NAME)\")"
  fi
else
  instance="chaos-$$"
  trap 'hack/testbed.sh down --instance "$instance"' EXIT
  hack/testbed.sh up --instance "$instance" --hypervisors 2
  eval "$(hack/testbed.sh env --instance "$instance")"
fi

log "chaos campaign: seed $seed, $kills kill points, logs in $logs"
out="$logs/campaign.out"
started=$(date +%s)
status=0
SEAPATH_CHAOS_STRICT=1 SEAPATH_CHAOS_SEED="$seed" SEAPATH_CHAOS_KILLS="$kills" SEAPATH_CHAOS_LOGS="$logs" \
  cargo test --test chaos -- --nocapture 2>&1 | tee "$out" || status=$? # pipefail: cargo's status

echo
log "figures (seed $seed, $(( $(date +%s) - started )) s):"
grep -E '^chaos figures' "$out" || echo "no figures: the campaign did not reach its end (see $out)"
grep -E -A1000 '^chaos campaign, seed' "$out" | grep -E '^(chaos campaign|  )' | grep -v '^   ' || true
exit "$status"
