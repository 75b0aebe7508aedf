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
cargo build --release --quiet
binary="$PWD/target/release/seapath-operator"

if ! hack/testbed.sh env --instance "$instance" >/dev/null 2>&1; then
  hack/testbed.sh up --instance "$instance" --hypervisors 2
fi
eval "$(hack/testbed.sh env --instance "$instance")"

log "applying CRDs"
"$binary" crdgen | kubectl apply --server-side -f - >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=30s >/dev/null
log "applying examples/"
kubectl apply -f examples/ >/dev/null
kubectl get svm -A
