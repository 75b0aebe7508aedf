#!/usr/bin/env bash
# The whole test suite, against real components: installs what it needs, brings up a private
# test bed (kube-apiserver + etcd, Ceph, libvirt with QEMU), checks formatting, lints and CRD
# drift, builds the container image (hack/image.sh), runs every test (tests/image.rs runs that
# image's programs from its own root file system), and takes the test bed down again, whatever
# happened.
#
#   hack/test.sh [extra cargo test arguments]
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib/common.sh
source hack/lib/common.sh

command -v cargo >/dev/null || die "cargo is not installed: install Rust 1.89 or newer with rustup (https://rustup.rs) and rerun"
# Headers and libclang for the librbd/librados bindings (bindgen) and libvirt.
apt_ensure libclang-dev clang pkg-config librbd-dev librados-dev libvirt-dev

instance="test-$$"
started=$(date +%s)
# helm (built once with go install) and lua5.1, for the chart and Argo CD health checks.
hack/chart.sh tools
hack/testbed.sh install --with-qemu
trap 'hack/testbed.sh down --instance "$instance"' EXIT
hack/testbed.sh up --instance "$instance" --with-qemu --hypervisors 2
eval "$(hack/testbed.sh env --instance "$instance")"

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
log "checking crds/ against the Rust types"
cargo run --quiet -- crdgen --out-dir crds --check
# Built before the tests: tests/image.rs runs the image's programs from its root file system.
log "building the container image"
SEAPATH_IMAGE=$(hack/image.sh "$PWD/target/image")
export SEAPATH_IMAGE
log "cargo test"
cargo test "$@"
log "test suite finished in $(( $(date +%s) - started )) s"
