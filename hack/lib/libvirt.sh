# libvirt for the test bed: simulated hypervisors (libvirt's test driver, one node file per
# hypervisor) and, with --with-qemu, the machine's libvirtd for real QEMU guests, one private
# libvirtd per hypervisor (real QEMU "hosts" for failover and live migration, see below) and a
# tiny boot-test guest (a Debian kernel and a busybox initramfs, see hack/lib/guest/init).
# Sourced by hack/testbed.sh; uses the helpers of hack/lib/common.sh.
#
# libvirtd's system sockets (/run/libvirt) are global to the machine, so there is one libvirtd
# for all instances: an instance reuses a libvirtd (and virtlogd) that already answers and then
# never stops it; one it started itself is stopped by its `down`, unless another instance that
# is still up uses QEMU (the PID files are then handed over to that instance), or someone else
# still uses it (running domains not of this instance, or client connections): it is then left
# running, with a warning naming its PID.
#
# QEMU domains: `down` destroys and undefines the domains whose name starts with
# "seapath-e2e-<instance>-" (exported as SEAPATH_E2E_PREFIX) and undefines the libvirt secrets
# whose ceph usage name starts with it. Tests name what they create that way; nothing else on
# the machine's libvirtd is touched.
#
# Private QEMU hosts (with --with-qemu, one per hypervisor: hv1..hvN, exported as
# SEAPATH_QEMU_NODES=hv1=qemu+unix:///system?socket=PATH,hv2=...): each is a monolithic libvirtd
# in its own mount namespace, where per-host directories under $TESTBED_DIR/libvirt/qemu/hvI/
# are bind-mounted over /run/libvirt, /var/lib/libvirt, /var/cache/libvirt, /var/log/libvirt and
# /etc/libvirt (the configuration files of the machine's /etc/libvirt, without its domains,
# networks, pools, secrets and hooks). Each has its own host UUID (migration refuses a
# destination with the source's UUID), its socket in hvI/sock (outside the private mounts, so
# clients reach it; no authentication, root only), its own migration and display port ranges,
# QEMU as root and QEMU's output in hvI/log/qemu/NAME.log (stdio_handler "file": no virtlogd),
# and TMPDIR=hvI/tmp, which libvirt passes on to QEMU and which marks QEMU processes as this
# host's. Its libvirtd log is $TESTBED_DIR/logs/libvirtd-hvI.log (SEAPATH_QEMU_NODE_LOGS).
# Clients must use qemu+unix:// URIs: with qemu:///system?socket= both ends look local to
# libvirt, which then refuses to migrate. `down` destroys every domain of these hosts, stops
# their libvirtd and kills what is left of their processes; their mounts go with them.
# Known wart: QEMU's cgroups are /machine/qemu-ID-NAME.libvirt-qemu for every libvirtd of the
# machine, so a domain with the same name and ID on two hosts (e.g. the first domain migrated
# to a fresh host) shares one: the host it leaves retries removing it for ~0.6 s and logs
# "Failed to remove cgroup"; the migration itself is not affected.
#
# Environment knobs:
#   SEAPATH_GUEST_KERNEL_PACKAGE  Debian kernel package of the boot-test guest (default: the
#                                 one linux-image-amd64 depends on)
# shellcheck shell=bash

LIBVIRT_LIB_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
LIBVIRT_QEMU_URI=qemu:///system
# Ports per private QEMU host: migration (16), then VNC/SPICE display (8), then websocket (8).
LIBVIRT_HOST_PORTS=32
LIBVIRT_GUEST_DIR="$SEAPATH_CACHE_DIR/guest"
# Modules the guest needs for a virtio-blk disk on virtio-pci; dependencies are added.
LIBVIRT_GUEST_MODULES="virtio_pci virtio_blk"

libvirt_install() {
  apt_ensure libvirt-dev pkg-config libvirt-clients
  if [ "${WITH_QEMU:-0}" = 1 ]; then
    apt_ensure libvirt-daemon-system libvirt-daemon-system-sysv qemu-system-x86 qemu-block-extra busybox-static util-linux mount
    _libvirt_build_guest
  fi
}

_libvirt_quote() {
  local s=${1//\'/\'\\\'\'}
  printf "'%s'" "$s"
}

_libvirt_fail() {
  libvirt_down >/dev/null 2>&1 || true
  die "$*"
}

_libvirt_virsh() {
  timeout "${VIRSH_TIMEOUT:-10}" virsh -q -c "$LIBVIRT_QEMU_URI" "$@"
}

_libvirt_system_answers() {
  VIRSH_TIMEOUT=5 _libvirt_virsh version >/dev/null 2>&1
}

# ---------------------------------------------------------------------------------------------
# The boot-test guest, cached in $SEAPATH_CACHE_DIR/guest:
#   vmlinuz           the kernel of a Debian linux-image-*-amd64 package (never installed)
#   vmlinux           the same kernel uncompressed (ELF, booted by QEMU through PVH): it boots
#                     ~2x faster under TCG; exported as SEAPATH_GUEST_KERNEL when present
#   modules/*.ko      the modules of $LIBVIRT_GUEST_MODULES and their dependencies
#   modules/order     their names in load order
#   initrd.img        busybox-static + modules + hack/lib/guest/init, rebuilt when init changes
# ---------------------------------------------------------------------------------------------

# Prints the dependencies of a module file (from its .modinfo section; no kmod needed).
_libvirt_module_deps() {
  tr '\0' '\n' <"$1" | sed -n 's/^depends=//p' | head -n 1 | tr ',' ' '
}

# Finds a module's file by name in an extracted modules tree (names use _ where files may use -).
_libvirt_module_file() {
  local tree=$1 name=$2
  local f
  f=$(find "$tree" -name "$name.ko" -print -quit)
  [ -n "$f" ] || f=$(find "$tree" -name "${name//_/-}.ko" -print -quit)
  [ -n "$f" ] && echo "$f"
}

# Adds a module after its dependencies to the list in the file named by $2 (depth first).
_libvirt_add_module() {
  local tree=$1 order=$2 name=$3 builtin=$4 depth=${5:-0}
  [ "$depth" -lt 20 ] || die "module dependencies of $name are too deep or circular"
  grep -qx "$name" "$order" && return 0
  # Built into the kernel: nothing to load.
  grep -q "/${name}.ko\$\|/${name//_/-}.ko\$" "$builtin" && return 0
  local file dep
  file=$(_libvirt_module_file "$tree" "$name") || die "kernel module $name not found in the guest kernel package"
  for dep in $(_libvirt_module_deps "$file"); do
    _libvirt_add_module "$tree" "$order" "$dep" "$builtin" $((depth + 1))
  done
  grep -qx "$name" "$order" || echo "$name" >>"$order"
}

# Extracts the uncompressed ELF kernel from a bzImage (like the kernel's extract-vmlinux).
# QEMU boots it through its PVH entry point, skipping the decompression that takes ~7-10 s
# under software emulation.
_libvirt_extract_vmlinux() {
  local vmlinuz=$1 out=$2
  local magic tool off
  for magic in 'xz -dc:\xfd7zXZ\x00' 'zstd -dcq:\x28\xb5\x2f\xfd' 'gzip -dc:\x1f\x8b\x08'; do
    tool=${magic%%:*}
    command -v "${tool%% *}" >/dev/null || continue
    for off in $(LC_ALL=C grep -aboP "${magic#*:}" "$vmlinuz" | cut -d: -f1); do
      # The stream is followed by the rest of the bzImage: the tool's complaint about it is expected.
      tail -c +$((off + 1)) "$vmlinuz" | $tool >"$out" 2>/dev/null || true
      if [ "$(head -c 4 "$out" | od -An -c | tr -d ' ')" = '177ELF' ] && [ "$(stat -c %s "$out")" -gt 1000000 ]; then
        return 0
      fi
    done
  done
  rm -f "$out"
  return 1
}

_libvirt_build_kernel() {
  local out=$1
  local pkg=${SEAPATH_GUEST_KERNEL_PACKAGE:-}
  if [ -z "$pkg" ]; then
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*-amd64\)$/\1/p' | head -n 1)
    [ -n "$pkg" ] || die "cannot find the Debian kernel package for the boot-test guest: run 'apt-get update' (or set SEAPATH_GUEST_KERNEL_PACKAGE)"
  fi
  local work
  work=$(mktemp -d "$out/.kernel.XXXXXX")
  log "building the boot-test guest: downloading $pkg (not installed on this machine)"
  if ! (cd "$work" && apt-get download "$pkg" >"$work/download.log" 2>&1); then
    # The package lists may name a version the mirror no longer has.
    apt-get update -qq >/dev/null 2>&1 || true
    (cd "$work" && apt-get download "$pkg" >"$work/download.log" 2>&1) || {
      rm -rf "$work"
      die "cannot download the kernel package $pkg with apt-get download: check the Debian mirror (or set SEAPATH_GUEST_KERNEL_PACKAGE)"
    }
  fi
  dpkg-deb -x "$work"/*.deb "$work/x" || { rm -rf "$work"; die "cannot extract $pkg: the download in $work may be corrupt"; }
  local vmlinuz moddir
  vmlinuz=$(find "$work/x/boot" -name 'vmlinuz-*' -print -quit)
  moddir=$(find "$work/x/lib/modules" -mindepth 1 -maxdepth 1 -type d -print -quit)
  [ -n "$vmlinuz" ] && [ -n "$moddir" ] || { rm -rf "$work"; die "$pkg has no vmlinuz or modules: set SEAPATH_GUEST_KERNEL_PACKAGE to a linux-image-*-amd64 package"; }
  mkdir -p "$work/modules"
  : >"$work/modules/order"
  touch "$moddir/modules.builtin"
  local name
  for name in $LIBVIRT_GUEST_MODULES; do
    _libvirt_add_module "$moddir/kernel" "$work/modules/order" "$name" "$moddir/modules.builtin"
  done
  for name in $(cat "$work/modules/order"); do
    local file
    file=$(_libvirt_module_file "$moddir/kernel" "$name")
    cp "$file" "$work/modules/$name.ko"
  done
  rm -rf "$out/modules" "$out/vmlinuz" "$out/vmlinux"
  if grep -qx 'CONFIG_PVH=y' "$work/x/boot/config-"* 2>/dev/null &&
    _libvirt_extract_vmlinux "$vmlinuz" "$work/vmlinux"; then
    mv "$work/vmlinux" "$out/vmlinux"
  fi
  mv "$work/modules" "$out/modules"
  cp "$vmlinuz" "$out/vmlinuz.tmp" && mv "$out/vmlinuz.tmp" "$out/vmlinuz"
  echo "$pkg $(basename "$moddir")" >"$out/kernel-package"
  rm -rf "$work"
}

_libvirt_build_initrd() {
  local out=$1 init=$2
  local busybox
  busybox=$(command -v busybox) || die "busybox is not installed: run 'apt-get install busybox-static'"
  ! ldd "$busybox" >/dev/null 2>&1 ||
    die "$busybox is dynamically linked: install busybox-static ('apt-get install busybox-static')"
  local root
  root=$(mktemp -d "$out/.initrd.XXXXXX")
  mkdir -p "$root/bin" "$root/etc" "$root/lib/modules" "$root/proc" "$root/sys" "$root/dev"
  cp "$busybox" "$root/bin/busybox"
  cp "$init" "$root/init"
  chmod 755 "$root/init" "$root/bin/busybox"
  cp "$out"/modules/*.ko "$root/lib/modules/"
  cp "$out/modules/order" "$root/etc/modules"
  (cd "$root" && find . | busybox cpio -o -H newc -R 0:0 2>/dev/null | gzip -1 >"$out/initrd.img.tmp") ||
    { rm -rf "$root"; die "building the guest initramfs failed in $root"; }
  mv "$out/initrd.img.tmp" "$out/initrd.img"
  rm -rf "$root"
}

# Builds what is missing; the kernel is downloaded once per cache directory. Concurrent
# instances serialise on a lock file.
_libvirt_build_guest() {
  local out=$LIBVIRT_GUEST_DIR
  local init="$LIBVIRT_LIB_DIR/guest/init"
  [ -f "$init" ] || die "$init is missing: restore it from git"
  mkdir -p "$out" || die "cannot create $out: check SEAPATH_CACHE_DIR"
  local stamp
  stamp="$(sha256sum "$init" | cut -d' ' -f1) $(dpkg-query -W -f='${Version}' busybox-static 2>/dev/null)"
  (
    flock 9
    if [ ! -s "$out/vmlinuz" ] || [ ! -s "$out/modules/order" ] || [ ! -f "$out/kernel-package" ]; then
      _libvirt_build_kernel "$out"
    fi
    if [ ! -s "$out/initrd.img" ] || [ "$(cat "$out/initrd.stamp" 2>/dev/null)" != "$stamp" ]; then
      _libvirt_build_initrd "$out" "$init"
      echo "$stamp" >"$out/initrd.stamp"
    fi
  ) 9>"$out/.lock" || exit 1
}

# ---------------------------------------------------------------------------------------------
# libvirtd for QEMU
# ---------------------------------------------------------------------------------------------

# Without user/group root, libvirt 9 re-probes QEMU (~30 s) on every define here.
_libvirt_configure_qemu() {
  local conf=/etc/libvirt/qemu.conf
  [ -f "$conf" ] || die "$conf is missing: reinstall libvirt-daemon-driver-qemu"
  local user
  user=$(sed -n 's/^[[:space:]]*user[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$conf" | tail -n 1)
  if [ -z "$user" ]; then
    [ -w "$conf" ] || die "$conf sets no QEMU user and is not writable: add 'user = \"root\"' and 'group = \"root\"' to it"
    printf '\n# Added by seapath-operator hack/lib/libvirt.sh: QEMU runs as root, else libvirt\n# re-probes QEMU on every define.\nuser = "root"\ngroup = "root"\n' >>"$conf"
    return 0
  fi
  [ "$user" = root ] || log "warning: $conf runs QEMU as '$user': defining a domain may take ~30 s (set user = \"root\")"
}

_libvirt_start_qemu() {
  local dir=$1
  touch "$dir/uses-qemu"
  if _libvirt_system_answers; then
    log "reusing the libvirtd that answers on $LIBVIRT_QEMU_URI (it is not stopped by down)"
    grep -q '^[[:space:]]*user[[:space:]]*=[[:space:]]*"root"' /etc/libvirt/qemu.conf 2>/dev/null ||
      log "warning: /etc/libvirt/qemu.conf does not run QEMU as root: defining a domain may take ~30 s (set user = \"root\" and group = \"root\", then restart libvirtd)"
    return 0
  fi
  local pid
  pid=$(pgrep -x libvirtd | head -n 1 || true)
  [ -z "$pid" ] || _libvirt_fail "a libvirtd (pid $pid) is running but does not answer on $LIBVIRT_QEMU_URI: stop it (kill $pid) or repair it, then rerun"
  _libvirt_configure_qemu
  command -v libvirtd >/dev/null && command -v virtlogd >/dev/null ||
    _libvirt_fail "libvirtd or virtlogd is missing: run 'hack/testbed.sh install --components libvirt --with-qemu'"
  mkdir -p /run/libvirt /var/log/libvirt/qemu /var/lib/libvirt/qemu /var/cache/libvirt/qemu
  if pgrep -x virtlogd >/dev/null; then
    log "reusing the running virtlogd"
  else
    start_daemon virtlogd virtlogd
  fi
  start_daemon libvirtd libvirtd
  local deadline=$(( $(date +%s) + 60 ))
  until _libvirt_system_answers; do
    if ! daemon_running libvirtd; then
      # Another instance may have started one at the same time: use it if it answers.
      rm -f "$TESTBED_DIR/pids/libvirtd"
      _libvirt_system_answers && break
      _libvirt_fail "libvirtd exited at start: read $TESTBED_DIR/logs/libvirtd.log"
    fi
    [ "$(date +%s)" -lt "$deadline" ] ||
      _libvirt_fail "libvirtd did not answer on $LIBVIRT_QEMU_URI within 60 s: read $TESTBED_DIR/logs/libvirtd.log"
    sleep 0.1
  done
  if [ -f "$TESTBED_DIR/pids/virtlogd" ] && ! daemon_running virtlogd; then
    rm -f "$TESTBED_DIR/pids/virtlogd"
    pgrep -x virtlogd >/dev/null || _libvirt_fail "virtlogd exited at start: read $TESTBED_DIR/logs/virtlogd.log"
  fi
}

# ---------------------------------------------------------------------------------------------
# Private QEMU hosts (see the top of this file)
# ---------------------------------------------------------------------------------------------

_libvirt_hosts_dir() {
  echo "$TESTBED_DIR/libvirt/qemu"
}

_libvirt_host_uri() {
  echo "qemu+unix:///system?socket=$1/sock/libvirt-sock"
}

_libvirt_host_virsh() {
  local uri=$1
  shift
  timeout "${VIRSH_TIMEOUT:-10}" virsh -q -c "$uri" "$@"
}

# Copies the machine's libvirt configuration files and sets what makes the host private.
_libvirt_host_configure() {
  local hostdir=$1 ports=$2
  local etc="$hostdir/etc" f
  for f in /etc/libvirt/*; do
    [ -f "$f" ] && cp -p "$f" "$etc/"
  done
  # libvirt's stock network filters are copied too; domains, networks, pools, secrets and
  # hooks are not: they belong to the machine's libvirtd (autostarted twice they would clash).
  [ -d /etc/libvirt/nwfilter ] && cp -pr /etc/libvirt/nwfilter "$etc/"
  mkdir -p "$etc/qemu"
  [ -f "$etc/libvirtd.conf" ] && [ -f "$etc/qemu.conf" ] ||
    _libvirt_fail "/etc/libvirt/libvirtd.conf or /etc/libvirt/qemu.conf is missing: reinstall libvirt-daemon-system"
  # Settings made here replace the machine's (libvirt reads the first of repeated settings).
  sed -i -E '/^[[:space:]]*(unix_sock_dir|unix_sock_ro_perms|unix_sock_rw_perms|auth_unix_ro|auth_unix_rw|listen_tls|listen_tcp|host_uuid|log_outputs)[[:space:]]*=/d' "$etc/libvirtd.conf"
  sed -i -E '/^[[:space:]]*(user|group|stdio_handler|migration_port_min|migration_port_max|remote_display_port_min|remote_display_port_max|remote_websocket_port_min|remote_websocket_port_max)[[:space:]]*=/d' "$etc/qemu.conf"
  cat >>"$etc/libvirtd.conf" <<CONF

# Added by seapath-operator hack/lib/libvirt.sh: private host $(basename "$hostdir") of test bed '$INSTANCE'.
unix_sock_dir = "$hostdir/sock"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
listen_tls = 0
listen_tcp = 0
host_uuid = "$(cat /proc/sys/kernel/random/uuid)"
log_outputs = "3:stderr"
CONF
  cat >>"$etc/qemu.conf" <<CONF

# Added by seapath-operator hack/lib/libvirt.sh: private host $(basename "$hostdir") of test bed '$INSTANCE'.
user = "root"
group = "root"
stdio_handler = "file"
migration_port_min = $ports
migration_port_max = $(( ports + 15 ))
remote_display_port_min = $(( ports + 16 ))
remote_display_port_max = $(( ports + 23 ))
remote_websocket_port_min = $(( ports + 24 ))
remote_websocket_port_max = $(( ports + 31 ))
CONF
}

# Runs in the new mount namespace: mounts the host's directories, then becomes its libvirtd
# (same PID, so the PID start_daemon recorded is libvirtd's).
# shellcheck disable=SC2016 # expanded by the inner bash
LIBVIRT_HOST_EXEC='
set -e
hostdir=$1
for m in run:/run/libvirt lib:/var/lib/libvirt cache:/var/cache/libvirt log:/var/log/libvirt etc:/etc/libvirt; do
  mkdir -p "${m#*:}"
  mount --bind "$hostdir/${m%%:*}" "${m#*:}"
done
export TMPDIR="$hostdir/tmp"
exec libvirtd -p "$hostdir/libvirtd.pid"
'

_libvirt_host_start() {
  local hostdir=$1
  local name
  name=$(basename "$hostdir")
  start_daemon "libvirtd-$name" unshare --mount --propagation private bash -c "$LIBVIRT_HOST_EXEC" "libvirtd-$name" "$hostdir"
}

# Waits until a private host answers, or fails naming its log.
_libvirt_host_wait() {
  local hostdir=$1 timeout_s=$2
  local name uri deadline
  name=$(basename "$hostdir")
  uri=$(_libvirt_host_uri "$hostdir")
  deadline=$(( $(date +%s) + timeout_s ))
  until VIRSH_TIMEOUT=5 _libvirt_host_virsh "$uri" version >/dev/null 2>&1; do
    daemon_running "libvirtd-$name" ||
      _libvirt_fail "the libvirtd of QEMU host $name exited at start: read $TESTBED_DIR/logs/libvirtd-$name.log"
    [ "$(date +%s)" -lt "$deadline" ] ||
      _libvirt_fail "the libvirtd of QEMU host $name did not answer on $uri within ${timeout_s} s: read $TESTBED_DIR/logs/libvirtd-$name.log"
    sleep 0.05
  done
}

# Starts one private libvirtd per hypervisor. They start in parallel when QEMU's capabilities
# can be seeded (libvirtd probes every emulator at start, ~8 s each here under TCG): from the
# machine's libvirtd cache, else from hv1, started and waited for first.
libvirt_hosts_up() {
  local base
  base=$(_libvirt_hosts_dir)
  command -v libvirtd >/dev/null || _libvirt_fail "libvirtd is missing: run 'hack/testbed.sh install --components libvirt --with-qemu'"
  command -v unshare >/dev/null && command -v mount >/dev/null ||
    _libvirt_fail "unshare or mount is missing: run 'apt-get install util-linux mount'"
  rm -rf "$base"
  mkdir -p "$base"
  local seed=/var/cache/libvirt/qemu/capabilities
  compgen -G "$seed/*.xml" >/dev/null || seed=""
  local i hostdir uri ports
  for i in $(seq 1 "$HYPERVISORS"); do
    hostdir="$base/hv$i"
    uri=$(_libvirt_host_uri "$hostdir")
    [[ $uri =~ ^qemu\+unix:///system\?socket=/[A-Za-z0-9/._-]+$ ]] ||
      _libvirt_fail "the QEMU host URI '$uri' would need escaping: use an absolute SEAPATH_TESTBED_ROOT made of letters, digits and / . _ -"
    # The longest socket is hvI/sock/libvirt-admin-sock; unix socket paths have 107 bytes at most.
    [ ${#hostdir} -le 80 ] ||
      _libvirt_fail "$hostdir/sock/libvirt-sock is too long for a unix socket: use a shorter SEAPATH_TESTBED_ROOT"
    mkdir -p "$hostdir"/{run,lib,cache/qemu/capabilities,log/qemu,etc,sock,tmp}
    ports=$(free_port_range "$LIBVIRT_HOST_PORTS")
    _libvirt_host_configure "$hostdir" "$ports"
    echo "$uri" >"$hostdir/uri"
    [ -z "$seed" ] || cp -p "$seed"/*.xml "$hostdir/cache/qemu/capabilities/"
    _libvirt_host_start "$hostdir"
    if [ -z "$seed" ]; then
      _libvirt_host_wait "$hostdir" 120
      seed="$hostdir/cache/qemu/capabilities"
      compgen -G "$seed/*.xml" >/dev/null || seed=""
    fi
  done
  for i in $(seq 1 "$HYPERVISORS"); do
    _libvirt_host_wait "$base/hv$i" 120
  done
  echo "$HYPERVISORS" >"$base/hosts"
}

# PIDs of what a private host's libvirtd left running: processes with its TMPDIR (QEMU and
# other helpers libvirtd spawns), and QEMU processes whose command line names its directory.
_libvirt_host_leftovers() {
  local hostdir=$1
  local p pid comm
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    [ "$pid" = "$$" ] || [ "$pid" = "$BASHPID" ] && continue
    if grep -qzxF "TMPDIR=$hostdir/tmp" "$p/environ" 2>/dev/null; then
      echo "$pid"
      continue
    fi
    read -r comm 2>/dev/null <"$p/comm" || continue
    case $comm in
      qemu-*) grep -qzF "$hostdir/" "$p/cmdline" 2>/dev/null && echo "$pid" ;;
    esac
  done
  return 0
}

# Safe when nothing was started.
libvirt_hosts_down() {
  local base hostdir name uri dom pids pid cgroups cg path
  base=$(_libvirt_hosts_dir)
  [ -d "$base" ] || return 0
  for hostdir in "$base"/hv*; do
    [ -d "$hostdir" ] || continue
    name=$(basename "$hostdir")
    uri=$(_libvirt_host_uri "$hostdir")
    if daemon_running "libvirtd-$name"; then
      for dom in $(_libvirt_host_virsh "$uri" list --name 2>/dev/null); do
        _libvirt_host_virsh "$uri" destroy "$dom" >/dev/null 2>&1 ||
          log "warning: could not destroy domain $dom on QEMU host $name: its process is killed below"
      done
    fi
    stop_daemon "libvirtd-$name"
    pids=$(_libvirt_host_leftovers "$hostdir")
    [ -z "$pids" ] && continue
    log "killing what QEMU host $name left running: pid(s) $(echo "$pids" | tr '\n' ' ')"
    # Their machine cgroups (qemu-ID-NAME.libvirt-qemu), which their dead libvirtd cannot remove.
    cgroups=$(for pid in $pids; do sed -n 's|.*/machine/\(qemu-[0-9]*-[^/]*\.libvirt-qemu\).*|\1|p' "/proc/$pid/cgroup" 2>/dev/null; done | sort -u)
    # shellcheck disable=SC2086 # one PID a word
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 50); do
      pids=$(for pid in $pids; do kill -0 "$pid" 2>/dev/null && echo "$pid"; done)
      [ -z "$pids" ] && break
      sleep 0.1
    done
    # shellcheck disable=SC2086
    [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
    # rmdir removes only empty cgroups: one another process still uses is left alone.
    for cg in $cgroups; do
      for path in /sys/fs/cgroup/machine/"$cg" /sys/fs/cgroup/*/machine/"$cg"; do
        [ -d "$path" ] && { find "$path" -depth -type d -exec rmdir {} + 2>/dev/null || true; }
      done
    done
  done
  rm -f "$base/hosts"
}

_libvirt_node_xml() {
  local index=$1
  cat <<EOF
<!-- Simulated hypervisor hv$index of test bed '$INSTANCE' (libvirt test driver node file). -->
<node>
  <cpu>
    <mhz>2400</mhz>
    <model>x86_64</model>
    <active>8</active>
    <nodes>1</nodes>
    <sockets>1</sockets>
    <cores>4</cores>
    <threads>2</threads>
  </cpu>
  <memory>16777216</memory>
</node>
EOF
}

libvirt_up() {
  local dir="$TESTBED_DIR/libvirt"
  command -v virsh >/dev/null || die "virsh is missing: run 'hack/testbed.sh install --components libvirt'"
  [[ ${HYPERVISORS:-} =~ ^[0-9]+$ ]] && [ "$HYPERVISORS" -ge 1 ] || die "HYPERVISORS must be a positive number, not '${HYPERVISORS:-}'"
  mkdir -p "$dir"
  rm -f "$dir"/hv*.xml
  local i path
  for i in $(seq 1 "$HYPERVISORS"); do
    path="$dir/hv$i.xml"
    _libvirt_node_xml "$i" >"$path"
    timeout 10 virsh -c "test://$path" list --all >"$TESTBED_DIR/logs/libvirt-hv$i.log" 2>&1 ||
      _libvirt_fail "libvirt's test driver cannot open $path: read $TESTBED_DIR/logs/libvirt-hv$i.log"
  done
  echo "$HYPERVISORS" >"$dir/hypervisors"
  if [ "${WITH_QEMU:-0}" = 1 ]; then
    _libvirt_build_guest
    [ -s "$LIBVIRT_GUEST_DIR/vmlinuz" ] && [ -s "$LIBVIRT_GUEST_DIR/initrd.img" ] ||
      _libvirt_fail "the boot-test guest is missing in $LIBVIRT_GUEST_DIR: remove that directory and rerun"
    echo "$LIBVIRT_GUEST_DIR" >"$dir/guest-dir"
    _libvirt_start_qemu "$dir"
  fi
}

libvirt_env() {
  local dir="$TESTBED_DIR/libvirt"
  [ -f "$dir/hypervisors" ] || die "libvirt of test bed '$INSTANCE' is not set up: run 'hack/testbed.sh up --instance $INSTANCE'"
  local nodes="" i
  for i in $(seq 1 "$(cat "$dir/hypervisors")"); do
    nodes+="${nodes:+,}hv$i=test://$dir/hv$i.xml"
  done
  echo "export SEAPATH_LIBVIRT_NODES=$(_libvirt_quote "$nodes")"
  if [ -f "$dir/uses-qemu" ]; then
    local guest
    guest=$(cat "$dir/guest-dir")
    echo "export SEAPATH_QEMU_URI=$(_libvirt_quote "$LIBVIRT_QEMU_URI")"
    local kernel="$guest/vmlinuz"
    [ -s "$guest/vmlinux" ] && kernel="$guest/vmlinux"
    echo "export SEAPATH_GUEST_KERNEL=$(_libvirt_quote "$kernel")"
    echo "export SEAPATH_GUEST_INITRD=$(_libvirt_quote "$guest/initrd.img")"
    echo "export SEAPATH_E2E_PREFIX=$(_libvirt_quote "seapath-e2e-$INSTANCE-")"
  fi
  local base
  base=$(_libvirt_hosts_dir)
  if [ -f "$base/hosts" ]; then
    local uris="" logs=""
    for i in $(seq 1 "$(cat "$base/hosts")"); do
      uris+="${uris:+,}hv$i=$(cat "$base/hv$i/uri")"
      logs+="${logs:+,}hv$i=$TESTBED_DIR/logs/libvirtd-hv$i.log"
    done
    echo "export SEAPATH_QEMU_NODES=$(_libvirt_quote "$uris")"
    echo "export SEAPATH_QEMU_NODE_LOGS=$(_libvirt_quote "$logs")"
  fi
}

# Destroys and undefines this instance's QEMU domains and secrets (see the top of this file).
_libvirt_cleanup_qemu_objects() {
  local prefix="seapath-e2e-$INSTANCE-"
  local name uuid usage
  for name in $(_libvirt_virsh list --all --name 2>/dev/null); do
    case $name in
      "$prefix"*)
        _libvirt_virsh destroy "$name" >/dev/null 2>&1 || true
        _libvirt_virsh undefine "$name" --nvram >/dev/null 2>&1 || _libvirt_virsh undefine "$name" >/dev/null 2>&1 || true
        ;;
    esac
  done
  _libvirt_virsh secret-list 2>/dev/null | while read -r uuid usage; do
    case $usage in
      *" $prefix"*) _libvirt_virsh secret-undefine "$uuid" >/dev/null 2>&1 || true ;;
    esac
  done
}

# Another instance that is up and uses QEMU, if any (to hand our libvirtd over to it).
_libvirt_other_qemu_instance() {
  local d
  for d in "$(dirname "$TESTBED_DIR")"/*; do
    [ "$d" != "$TESTBED_DIR" ] && [ -f "$d/libvirt/uses-qemu" ] && [ -d "$d/pids" ] && { echo "$d"; return 0; }
  done
  return 1
}

# Prints 0 when nobody else uses libvirtd, else who does: running domains that are not this
# instance's, or client connections (libvirtd's admin interface lists them).
_libvirt_foreign_users() {
  local domains clients
  domains=$(_libvirt_virsh list --name 2>/dev/null | grep -v "^seapath-e2e-$INSTANCE-" | grep -c . || true)
  clients=$(timeout 5 virt-admin -q srv-clients-list libvirtd 2>/dev/null | grep -c . || true)
  if [ "${domains:-0}" = 0 ] && [ "${clients:-0}" = 0 ]; then
    echo 0
  else
    echo "${domains:-0} running domain(s) of others and ${clients:-0} client connection(s)"
  fi
}

# Safe when nothing was started.
libvirt_down() {
  local dir="$TESTBED_DIR/libvirt"
  libvirt_hosts_down
  [ -f "$dir/uses-qemu" ] || return 0
  _libvirt_system_answers && _libvirt_cleanup_qemu_objects
  rm -f "$dir/uses-qemu"
  local other name
  if other=$(_libvirt_other_qemu_instance); then
    for name in libvirtd virtlogd; do
      if daemon_running "$name"; then
        mv "$TESTBED_DIR/pids/$name" "$other/pids/$name"
        log "left $name running for test bed '$(basename "$other")', which uses it"
      fi
    done
    return 0
  fi
  if daemon_running libvirtd && _libvirt_system_answers; then
    local users
    users=$(_libvirt_foreign_users)
    if [ "$users" != 0 ]; then
      log "warning: leaving libvirtd (pid $(cat "$TESTBED_DIR/pids/libvirtd")) running: $users; stop it yourself when they are done"
      rm -f "$TESTBED_DIR/pids/libvirtd" "$TESTBED_DIR/pids/virtlogd"
      return 0
    fi
  fi
  stop_daemon libvirtd
  stop_daemon virtlogd
}
