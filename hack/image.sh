#!/usr/bin/env bash
# Builds the container image without a container daemon: the release binary, the shared
# libraries it loads (librbd, librados, libvirt and their dependencies, taken from this Debian
# system's packages), qemu-img with its rbd module (the controller runs it to import qcow2
# sources), CA certificates and a passwd file, as one layer of an OCI image made with umoci
# (Debian package). Checks that the binary and qemu-img start in the image's root file system;
# tests/image.rs runs them from the unpacked image.
#
# The image holds no shell and no other program: the operator's processes spawn only qemu-img
# and, if configured, the administrator's power-fence command, which must bring what it needs.
#
#   hack/image.sh [OUT_DIR]     # default target/image
#
# Writes OUT_DIR/oci (OCI layout, tag $TAG) and OUT_DIR/seapath-operator-oci.tar (the same
# layout as a tar archive for `podman load` / `docker load` (Docker 25+) / `skopeo copy`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=hack/lib/common.sh
source hack/lib/common.sh

OUT=${1:-target/image}
TAG=${TAG:-$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)}
NAME=seapath-operator

[ "$(id -u)" -eq 0 ] || die "hack/image.sh needs root (files owned by root in the image, chroot check)"
command -v cargo >/dev/null || die "cargo is not installed: install Rust 1.89 or newer with rustup (https://rustup.rs) and rerun"
apt_ensure umoci ca-certificates libclang-dev clang pkg-config librbd-dev librados-dev libvirt-dev \
  qemu-utils qemu-block-extra

log "building the release binary"
cargo build --release --locked --quiet --bin seapath-operator
binary=target/release/seapath-operator

rootfs=$(mktemp -d /tmp/seapath-image.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
# mktemp made it 0700: the layer's root entry must let the controller's user (65532) in.
chmod 0755 "$rootfs"
mkdir -p "$rootfs"/{usr/bin,etc/ssl/certs,etc/ceph,tmp,var/run/ceph,var/log/ceph,var/run/libvirt,etc/seapath/ceph}
chmod 1777 "$rootfs/tmp"
install -m 0755 "$binary" "$rootfs/usr/bin/seapath-operator"
strip "$rootfs/usr/bin/seapath-operator"

# Copies a file to the same path in the root file system, following symbolic links but keeping
# the link name (the soname the loader looks for).
copy_file() {
  local path=$1
  [ -e "$rootfs$path" ] && return 0
  mkdir -p "$rootfs$(dirname "$path")"
  cp -L "$path" "$rootfs$path"
}

# Every shared library the loader resolves for a binary, recursively (ldd prints the closure).
copy_libraries() {
  local lib
  while read -r lib; do
    [ -n "$lib" ] && copy_file "$lib"
  done < <(ldd "$1" | awk '/=> \//{print $3} /^\t\//{print $1}')
}

log "collecting shared libraries"
copy_libraries "$binary"
# librados loads its compressor and crypto plugins at run time (dlopen), not through ldd.
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || gcc -print-multiarch)
for plugin_dir in "/usr/lib/$multiarch/ceph/compressor" "/usr/lib/$multiarch/ceph/crypto"; do
  [ -d "$plugin_dir" ] || continue
  for plugin in "$plugin_dir"/*.so*; do
    [ -e "$plugin" ] || continue
    copy_file "$plugin"
    copy_libraries "$plugin"
  done
done
# qemu-img, which the controller runs for qcow2 imports (src/controller/storage/import.rs). It
# writes into RBD through its rbd block driver, a module it loads at run time (package
# qemu-block-extra) from its module directory; the other modules (curl, iscsi, ssh, ...) are
# not used.
install -m 0755 /usr/bin/qemu-img "$rootfs/usr/bin/qemu-img"
copy_libraries /usr/bin/qemu-img
qemu_rbd="/usr/lib/$multiarch/qemu/block-rbd.so"
[ -f "$qemu_rbd" ] || die "$qemu_rbd is missing: install the Debian package qemu-block-extra"
copy_file "$qemu_rbd"
copy_libraries "$qemu_rbd"
# The loader's name resolution and the CA bundle for https:// disk sources.
cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/"
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/usr/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
nonroot:x:65532:
EOF
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
touch "$rootfs/etc/ceph/ceph.conf"

log "checking that the binary and qemu-img run in the image's root file system (chroot)"
chroot "$rootfs" /usr/bin/seapath-operator --version >/dev/null ||
  die "the binary does not start in the image root file system: a library is missing"
chroot "$rootfs" /usr/bin/seapath-operator crdgen >/dev/null ||
  die "crdgen failed in the image root file system"
chroot "$rootfs" /usr/bin/qemu-img --version >/dev/null ||
  die "qemu-img does not start in the image root file system: a library is missing"
# qemu-img lists the formats whose drivers it could load: rbd only when its module loads.
formats=$(chroot "$rootfs" /usr/bin/qemu-img --help) ||
  die "qemu-img --help failed in the image root file system"
grep -qw rbd <<<"$formats" ||
  die "qemu-img in the image root file system cannot load its rbd driver ($qemu_rbd or a library it needs is missing)"

log "writing the OCI image $NAME:$TAG to $OUT/oci"
rm -rf "$OUT/oci" "$OUT/$NAME-oci.tar"
mkdir -p "$OUT"
umoci init --layout "$OUT/oci"
umoci new --image "$OUT/oci:$TAG"
umoci insert --image "$OUT/oci:$TAG" "$rootfs" /
umoci config --image "$OUT/oci:$TAG" \
  --config.entrypoint /usr/bin/seapath-operator \
  --config.cmd controller \
  --config.user 65532:65532 \
  --config.workingdir / \
  --config.env PATH=/usr/bin \
  --config.exposedports 8080/tcp \
  --os linux --architecture "$(dpkg --print-architecture)" \
  --config.label org.opencontainers.image.title=seapath-operator \
  --config.label org.opencontainers.image.version="$TAG" \
  --config.label org.opencontainers.image.licenses=Apache-2.0 \
  --config.label org.opencontainers.image.description="SEAPATH VMs on Ceph RBD and libvirt, from Kubernetes"
umoci gc --layout "$OUT/oci"
tar -C "$OUT/oci" -cf "$OUT/$NAME-oci.tar" .

uncompressed=$(du -sb "$rootfs" | cut -f1)
compressed=$(find "$OUT/oci/blobs" -type f -size +100k -printf '%s\n' | awk '{s+=$1} END {print s}')
log "image $NAME:$TAG: $(( compressed / 1048576 )) MiB compressed (layer), $(( uncompressed / 1048576 )) MiB unpacked"
umoci stat --image "$OUT/oci:$TAG" | head -5 >&2
echo "$OUT/oci:$TAG"
