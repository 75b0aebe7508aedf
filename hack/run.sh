#!/usr/bin/env bash
# The operator's main job on a local test bed: starts kube-apiserver + etcd, Ceph and libvirt
# (two simulated hypervisors), applies the CRDs and the example VMs, runs the controller and
# one agent per hypervisor, and waits until `kubectl get svm` shows the examples Started.
#
#   hack/run.sh            # instance "demo"; leaves everything running
#   hack/testbed.sh down --instance demo   # stops it all (operator processes included)
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib/common.sh
source hack/lib/common.sh

instance=${SEAPATH_INSTANCE:-demo}
command -v cargo >/dev/null || die "cargo is not installed: install Rust 1.89 or newer with rustup (https://rustup.rs) and rerun"
apt_ensure libclang-dev clang pkg-config librbd-dev librados-dev libvirt-dev
log "building seapath-operator"
cargo build --quiet
binary="$PWD/target/debug/seapath-operator"

if ! hack/testbed.sh env --instance "$instance" >/dev/null 2>&1; then
  hack/testbed.sh up --instance "$instance" --hypervisors 2
fi
eval "$(hack/testbed.sh env --instance "$instance")"

log "applying CRDs"
"$binary" crdgen | kubectl apply --server-side -f - >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null

# One libvirt secret UUID per test bed, shared by the controller (XML) and the agents.
secret_file="$SEAPATH_TESTBED_DIR/libvirt-secret-uuid"
[ -f "$secret_file" ] || cat /proc/sys/kernel/random/uuid >"$secret_file"
export SEAPATH_LIBVIRT_SECRET_UUID
SEAPATH_LIBVIRT_SECRET_UUID=$(cat "$secret_file")
[ "$SEAPATH_CEPH_AUTH" = cephx ] || unset SEAPATH_LIBVIRT_SECRET_UUID

start_operator() {
  local name=$1
  shift
  local pidfile="$SEAPATH_TESTBED_DIR/pids/operator-$name"
  if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    kill "$(cat "$pidfile")" 2>/dev/null || true
    sleep 0.5
  fi
  "$binary" "$@" >"$SEAPATH_TESTBED_DIR/logs/operator-$name.log" 2>&1 &
  echo $! >"$pidfile"
}

log "starting the controller and one agent per hypervisor (logs in $SEAPATH_TESTBED_DIR/logs/operator-*.log)"
start_operator controller controller --http-addr 127.0.0.1:0
IFS=, read -r -a nodes <<<"$SEAPATH_LIBVIRT_NODES"
for entry in "${nodes[@]}"; do
  start_operator "agent-${entry%%=*}" agent --node "${entry%%=*}" --libvirt-uri "${entry#*=}" --http-addr 127.0.0.1:0
done

log "applying examples/"
kubectl apply -f examples/ >/dev/null
vms=$(kubectl get svm -A -o name | wc -l)
log "waiting until the $vms example VMs are Started"
if ! kubectl wait --for=jsonpath='{.status.phase}'=Started svm --all -A --timeout=120s >/dev/null; then
  kubectl get svm -A -o wide
  die "the example VMs did not reach Started within 120 s: read $SEAPATH_TESTBED_DIR/logs/operator-*.log and kubectl describe svm"
fi
kubectl get hypervisors
kubectl get svm -A
