#!/usr/bin/env bash
# The local test bed: a real kube-apiserver + etcd, a single-node Ceph and libvirt, on loopback.
#
#   hack/testbed.sh up   [--instance NAME] [--components kube,ceph,libvirt] [--hypervisors N]
#                        [--ceph-auth cephx|none] [--with-qemu]
#   hack/testbed.sh down [--instance NAME]
#   hack/testbed.sh env  [--instance NAME]      # prints the exports a shell needs
#   hack/testbed.sh install [--components ...]  # installs packages and builds binaries only
#
# --hypervisors N simulated hypervisors (libvirt test driver), N >= 2 for placement tests.
# --with-qemu also: the machine's libvirtd (SEAPATH_QEMU_URI) and N private libvirtd "hosts"
#   hv1..hvN with their own identity, for failover and live migration (SEAPATH_QEMU_NODES).
# Every instance has its own directory and ports, so several can run side by side.
# `down` stops only the processes this instance started, by the PIDs it recorded.
set -euo pipefail

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=hack/lib/common.sh
source "$HACK_DIR/lib/common.sh"
# shellcheck source=hack/lib/kube-build.sh
source "$HACK_DIR/lib/kube-build.sh"
# shellcheck source=hack/lib/kube.sh
source "$HACK_DIR/lib/kube.sh"
# shellcheck source=hack/lib/ceph.sh
source "$HACK_DIR/lib/ceph.sh"
# shellcheck source=hack/lib/libvirt.sh
source "$HACK_DIR/lib/libvirt.sh"

usage() {
  sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit "${1:-0}"
}

command=${1:-}
[ -n "$command" ] || usage 2
case $command in -h|--help) usage 0 ;; esac
shift
INSTANCE=default
COMPONENTS=kube,ceph,libvirt
HYPERVISORS=2
CEPH_AUTH=cephx
WITH_QEMU=0
while [ $# -gt 0 ]; do
  case $1 in
    --instance) INSTANCE=${2:?--instance needs a name}; shift 2 ;;
    --components) COMPONENTS=${2:?--components needs a list}; shift 2 ;;
    --hypervisors) HYPERVISORS=${2:?--hypervisors needs a number}; shift 2 ;;
    --ceph-auth) CEPH_AUTH=${2:?--ceph-auth needs cephx or none}; shift 2 ;;
    --with-qemu) WITH_QEMU=1; shift ;;
    -h|--help) usage 0 ;;
    *) die "unknown argument '$1': run hack/testbed.sh --help" ;;
  esac
done
[[ $INSTANCE =~ ^[a-z0-9-]+$ ]] || die "instance name '$INSTANCE' must match ^[a-z0-9-]+$"
[[ $HYPERVISORS =~ ^[0-9]+$ ]] && [ "$HYPERVISORS" -ge 1 ] || die "--hypervisors must be a positive number, not '$HYPERVISORS'"
case $CEPH_AUTH in cephx|none) ;; *) die "--ceph-auth must be cephx or none, not '$CEPH_AUTH'" ;; esac

export TESTBED_DIR="${SEAPATH_TESTBED_ROOT:-/tmp/seapath-testbed}/$INSTANCE"
export INSTANCE HYPERVISORS CEPH_AUTH WITH_QEMU

has_component() {
  case ",$COMPONENTS," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

cmd_install() {
  has_component kube && kube_build
  has_component ceph && ceph_install
  has_component libvirt && libvirt_install
  return 0
}

cmd_up() {
  if [ -f "$TESTBED_DIR/env" ]; then
    die "test bed '$INSTANCE' is already up (run 'hack/testbed.sh down --instance $INSTANCE' first)"
  fi
  cmd_install
  mkdir -p "$TESTBED_DIR/pids" "$TESTBED_DIR/logs"
  echo "$COMPONENTS" >"$TESTBED_DIR/components"
  # A failed start (a component calls die, which exits) must not leave half a test bed running.
  trap 'echo "error: start failed, stopping what was started" >&2; cmd_down >/dev/null 2>&1 || true' EXIT
  local summary="" t0
  : >"$TESTBED_DIR/env.partial"
  if has_component kube; then
    t0=$(now_ms); kube_up; summary+="  kube-apiserver+etcd  $(( $(now_ms) - t0 )) ms\n"
    kube_env >>"$TESTBED_DIR/env.partial"
  fi
  if has_component ceph; then
    t0=$(now_ms); ceph_up; summary+="  ceph (mon+osd+pool)  $(( $(now_ms) - t0 )) ms\n"
    ceph_env >>"$TESTBED_DIR/env.partial"
  fi
  if has_component libvirt; then
    t0=$(now_ms); libvirt_up; summary+="  libvirt              $(( $(now_ms) - t0 )) ms\n"
    if [ "$WITH_QEMU" = 1 ]; then
      t0=$(now_ms); libvirt_hosts_up
      summary+="$(printf '  %-20s %s' "qemu hosts hv1..hv$HYPERVISORS" "$(( $(now_ms) - t0 ))") ms\n"
    fi
    libvirt_env >>"$TESTBED_DIR/env.partial"
  fi
  echo "export SEAPATH_TESTBED_DIR=$TESTBED_DIR" >>"$TESTBED_DIR/env.partial"
  mv "$TESTBED_DIR/env.partial" "$TESTBED_DIR/env"
  trap - EXIT
  printf "test bed '%s' is up (%s):\n%b" "$INSTANCE" "$TESTBED_DIR" "$summary" >&2
  echo "load it with: eval \"\$(hack/testbed.sh env --instance $INSTANCE)\"" >&2
}

cmd_down() {
  [ -d "$TESTBED_DIR" ] || { log "test bed '$INSTANCE' is not up"; return 0; }
  # Operator processes that hack/run.sh started for this instance go first.
  local pidfile
  for pidfile in "$TESTBED_DIR"/pids/operator-*; do
    [ -e "$pidfile" ] && stop_daemon "$(basename "$pidfile")"
  done
  # Reverse order of start: libvirt, then the OSD before the mon, then the API server.
  libvirt_down || true
  ceph_down || true
  kube_down || true
  rm -rf "$TESTBED_DIR"
  log "test bed '$INSTANCE' is down"
}

cmd_env() {
  [ -f "$TESTBED_DIR/env" ] || die "test bed '$INSTANCE' is not up: run 'hack/testbed.sh up --instance $INSTANCE'"
  cat "$TESTBED_DIR/env"
}

case $command in
  up) cmd_up ;;
  down) cmd_down ;;
  env) cmd_env ;;
  install) cmd_install ;;
  *) die "unknown command '$command': use up, down, env or install" ;;
esac
