# Shared helpers for the test-bed scripts. Sourced, never executed.
# shellcheck shell=bash

SEAPATH_CACHE_DIR="${SEAPATH_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/seapath-operator}"
KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"

die() {
  echo "error: $*" >&2
  exit 1
}

log() {
  echo "[$(date +%H:%M:%S)] $*" >&2
}

# Milliseconds since the epoch, for the timing summary printed by `up`.
now_ms() {
  date +%s%3N
}

# Installs Debian packages that are missing; one apt-get update per run at most.
apt_ensure() {
  local missing=()
  local pkg
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "packages ${missing[*]} are missing and installing them needs root: run 'sudo apt-get install ${missing[*]}'"
  log "installing Debian packages: ${missing[*]}"
  if [ -z "${SEAPATH_APT_UPDATED:-}" ]; then
    apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed: check the Debian mirror in /etc/apt/sources.list"
    export SEAPATH_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/tmp/seapath-apt.$$.log 2>&1 ||
    die "could not install ${missing[*]} (see /tmp/seapath-apt.$$.log): check that the packages exist in your Debian release"
  rm -f /tmp/seapath-apt.$$.log
}

# Prints a free TCP port on 127.0.0.1. Ports already handed out to this instance are kept in
# a file, because callers use $(free_port) and a subshell cannot update a shell variable.
free_port() {
  local port taken="$TESTBED_DIR/ports-taken"
  touch "$taken"
  for _ in $(seq 1 200); do
    port=$(( (RANDOM % 20000) + 20000 ))
    port_reserved "$port" && continue
    if ! port_in_use "$port"; then
      echo "$port" >>"$taken"
      echo "$port"
      return 0
    fi
  done
  die "no free TCP port found on 127.0.0.1 between 20000 and 40000"
}

# Succeeds when a port was handed out to this or any other test-bed instance (their
# ports-taken files): ranges reserved with free_port_range are bound only later, if ever.
port_reserved() {
  local root
  root=$(dirname "$TESTBED_DIR")
  # One grep over all the files: grep -q in a pipeline would make the writer fail (pipefail).
  grep -qxF -- "$1" "$root"/*/ports-taken 2>/dev/null
}

# Prints the first of COUNT consecutive ports (between 20000 and 40000) that are neither in use
# on 127.0.0.1 nor reserved by any test-bed instance, and reserves them all for this instance;
# for daemons that bind ports of a range later (libvirtd's migration and display ports).
# Concurrent instances serialise on a lock file next to their directories.
free_port_range() {
  local count=$1
  local root taken="$TESTBED_DIR/ports-taken"
  root=$(dirname "$TESTBED_DIR")
  touch "$taken"
  (
    flock 9
    local first port ok
    for _ in $(seq 1 200); do
      first=$(( (RANDOM % (20000 - count)) + 20000 ))
      ok=1
      for port in $(seq "$first" $(( first + count - 1 ))); do
        if port_reserved "$port" || port_in_use "$port"; then
          ok=0
          break
        fi
      done
      if [ "$ok" = 1 ]; then
        seq "$first" $(( first + count - 1 )) >>"$taken"
        echo "$first"
        exit 0
      fi
    done
    exit 1
  ) 9>"$root/.ports.lock" || die "no $count consecutive free TCP ports found on 127.0.0.1 between 20000 and 40000"
}

port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# Fails with a clear message when an explicitly requested port is already taken.
require_free_port() {
  local name=$1 port=$2
  if port_in_use "$port"; then
    die "port $port (for $name) is already in use on 127.0.0.1: stop what listens there or choose another port"
  fi
}

# Starts a command in the background with its output in a log file and records its PID.
start_daemon() {
  local name=$1
  shift
  "$@" >"$TESTBED_DIR/logs/$name.log" 2>&1 &
  echo $! >"$TESTBED_DIR/pids/$name"
}

# Stops one daemon this test bed started, by the PID it recorded; waits for it to exit.
stop_daemon() {
  local name=$1
  local pidfile="$TESTBED_DIR/pids/$name"
  [ -f "$pidfile" ] || return 0
  local pid
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$pidfile"
}

daemon_running() {
  local pidfile="$TESTBED_DIR/pids/$1"
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

# Waits until a command succeeds, or fails with a message naming the log to read.
wait_for() {
  local what=$1 timeout_s=$2 logfile=$3
  shift 3
  local deadline=$(( $(date +%s) + timeout_s ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      die "$what did not become ready within ${timeout_s}s: read $logfile"
    fi
    sleep 0.1
  done
}
