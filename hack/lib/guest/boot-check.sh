#!/usr/bin/env bash
# Manual check of the boot-test guest against a test bed started with --with-qemu:
#
#   eval "$(hack/testbed.sh env --instance NAME)" && hack/lib/guest/boot-check.sh [MARKER]
#
# Creates a 16 MiB RBD image, a libvirt ceph secret (cephx only) and a QEMU domain booting
# $SEAPATH_GUEST_KERNEL/$SEAPATH_GUEST_INITRD with its disk on RBD, waits until the guest
# powers off, reads the first bytes of the image back with `rbd export` and removes all three.
# Prints the boot time. Everything it creates is named ${SEAPATH_E2E_PREFIX}boot-check-<pid>.
set -euo pipefail

for var in CEPH_CONF SEAPATH_CEPH_POOL SEAPATH_CEPH_MON_HOST SEAPATH_CEPH_MON_PORT SEAPATH_CEPH_AUTH \
  SEAPATH_CEPH_LIBVIRT_USER SEAPATH_QEMU_URI SEAPATH_GUEST_KERNEL SEAPATH_GUEST_INITRD SEAPATH_E2E_PREFIX; do
  [ -n "${!var:-}" ] || { echo "error: $var is not set: run eval \"\$(hack/testbed.sh env --instance NAME)\" for a test bed up with --with-qemu" >&2; exit 1; }
done

marker=${1:-hello-$$}
name="${SEAPATH_E2E_PREFIX}boot-check-$$"
image=$name
virsh=(virsh -q -c "$SEAPATH_QEMU_URI")
work=$(mktemp -d)
secret_uuid=""

cleanup() {
  "${virsh[@]}" destroy "$name" >/dev/null 2>&1 || true
  "${virsh[@]}" undefine "$name" >/dev/null 2>&1 || true
  [ -z "$secret_uuid" ] || "${virsh[@]}" secret-undefine "$secret_uuid" >/dev/null 2>&1 || true
  rbd -p "$SEAPATH_CEPH_POOL" rm "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

rbd -p "$SEAPATH_CEPH_POOL" create --size 16M "$image"

auth=""
if [ "$SEAPATH_CEPH_AUTH" = cephx ]; then
  secret_uuid=$(cat /proc/sys/kernel/random/uuid)
  cat >"$work/secret.xml" <<EOF
<secret ephemeral='no' private='yes'>
  <uuid>$secret_uuid</uuid>
  <usage type='ceph'><name>$name</name></usage>
</secret>
EOF
  "${virsh[@]}" secret-define "$work/secret.xml" >/dev/null
  # The key is base64 already, which is what --file expects; a file keeps it off command lines.
  printf '%s' "$SEAPATH_CEPH_LIBVIRT_KEY" >"$work/key"
  "${virsh[@]}" secret-set-value "$secret_uuid" --file "$work/key" >/dev/null
  auth="<auth username='$SEAPATH_CEPH_LIBVIRT_USER'><secret type='ceph' uuid='$secret_uuid'/></auth>"
fi

cat >"$work/domain.xml" <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$SEAPATH_GUEST_KERNEL</kernel>
    <initrd>$SEAPATH_GUEST_INITRD</initrd>
    <cmdline>console=ttyS0 seapath.marker=$marker</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='network' device='disk'>
      <driver name='qemu' type='raw'/>
      $auth
      <source protocol='rbd' name='$SEAPATH_CEPH_POOL/$image'>
        <host name='$SEAPATH_CEPH_MON_HOST' port='$SEAPATH_CEPH_MON_PORT'/>
      </source>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <serial type='file'><source path='$work/console.log'/><target port='0'/></serial>
    <console type='file'><source path='$work/console.log'/><target type='serial' port='0'/></console>
  </devices>
</domain>
EOF
"${virsh[@]}" define "$work/domain.xml" >/dev/null
t0=$(date +%s%3N)
"${virsh[@]}" start "$name" >/dev/null
t1=$(date +%s%3N)
until [ "$("${virsh[@]}" domstate "$name")" = "shut off" ]; do
  if [ $(( $(date +%s%3N) - t0 )) -gt 180000 ]; then
    echo "error: the guest did not power off within 180 s; console:" >&2
    tail -n 20 "$work/console.log" >&2 || true
    exit 1
  fi
  sleep 0.1
done
t2=$(date +%s%3N)

expected="SEAPATH-E2E:$marker"
rbd -p "$SEAPATH_CEPH_POOL" export "$image" "$work/disk" >/dev/null 2>&1
got=$(head -c $(( ${#expected} + 1 )) "$work/disk" | od -An -c | tr -s ' ')
want=$(printf '%s\n' "$expected" | od -An -c | tr -s ' ')
if [ "$got" != "$want" ]; then
  echo "error: the image does not start with '$expected\\n' (got:$got); console:" >&2
  tail -n 20 "$work/console.log" >&2 || true
  exit 1
fi
grep -q seapath-e2e-done "$work/console.log" || { echo "error: no seapath-e2e-done on the console" >&2; exit 1; }
echo "ok: marker '$marker' read back through librbd; virsh start $((t1 - t0)) ms, start to shut off $((t2 - t0)) ms"
