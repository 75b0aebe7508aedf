# Builds etcd, kube-apiserver and kubectl from the Go module proxy, cached per version
# outside the repository. Sourced by hack/testbed.sh.
# shellcheck shell=bash

KUBE_BIN_DIR="$SEAPATH_CACHE_DIR/kube/$KUBE_VERSION-etcd-$ETCD_VERSION/bin"

kube_binaries_cached() {
  [ -x "$KUBE_BIN_DIR/kube-apiserver" ] && [ -x "$KUBE_BIN_DIR/kubectl" ] && [ -x "$KUBE_BIN_DIR/etcd" ]
}

# Fails with a one-line hint when the proxy does not serve a version we need.
go_require_version() {
  local module=$1 version=$2
  local versions
  versions=$(GOTOOLCHAIN=local GOFLAGS=-mod=mod go list -m -versions "$module" 2>/dev/null) ||
    die "the Go module proxy ($(go env GOPROXY)) cannot be reached for $module: check GOPROXY and the network"
  case " $versions " in
    *" $version "*) ;;
    *) die "the Go module proxy does not serve $module@$version; it serves:${versions#"$module"} (set KUBE_VERSION/ETCD_VERSION to one of them)" ;;
  esac
}

kube_build() {
  kube_binaries_cached && return 0
  command -v go >/dev/null || die "Go is not installed: install Go 1.25 or newer (https://go.dev/doc/install) and rerun"
  local staging_version="v0.${KUBE_VERSION#v1.}"
  go_require_version k8s.io/kubernetes "$KUBE_VERSION"
  go_require_version go.etcd.io/etcd/server/v3 "$ETCD_VERSION"

  local work
  work=$(mktemp -d "${TMPDIR:-/tmp}/seapath-kube-build.XXXXXX")
  export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
  log "building etcd $ETCD_VERSION (first run only; cached in $KUBE_BIN_DIR)"
  mkdir -p "$work/etcd" "$KUBE_BIN_DIR.tmp"
  (
    cd "$work/etcd" &&
      go mod init seapath-testbed/etcd >/dev/null 2>&1 &&
      go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 &&
      go build -trimpath -ldflags "-s -w" -o "$KUBE_BIN_DIR.tmp/etcd" go.etcd.io/etcd/server/v3
  ) >"$work/etcd.log" 2>&1 || die "building etcd failed: read $work/etcd.log"

  log "building kube-apiserver and kubectl $KUBE_VERSION (first run only, 10-25 min on 2 cores)"
  mkdir -p "$work/kube"
  (
    set -e
    cd "$work/kube"
    go mod init seapath-testbed/kube
    local gomod
    gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
    [ -f "$gomod" ]
    # k8s.io/kubernetes replaces its staging modules with local paths; pin each to its release.
    local staging
    staging=$(sed -n 's#^[[:space:]]*\(k8s.io/[a-z0-9.-]*\) => ./staging/.*#\1#p' "$gomod")
    [ -n "$staging" ]
    go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
    local m
    for m in $staging; do
      go mod edit -replace="$m=$m@$staging_version"
    done
    go get "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" "k8s.io/kubernetes/cmd/kubectl@$KUBE_VERSION"
    local minor=${KUBE_VERSION#v1.}
    minor=${minor%%.*}
    local ldflags="-s -w"
    local pkg
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags="$ldflags -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
    done
    go build -trimpath -ldflags "$ldflags" -o "$KUBE_BIN_DIR.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
    go build -trimpath -ldflags "$ldflags" -o "$KUBE_BIN_DIR.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
  ) >"$work/kube.log" 2>&1 || die "building kube-apiserver failed: read $work/kube.log"
  rm -rf "$KUBE_BIN_DIR"
  mv "$KUBE_BIN_DIR.tmp" "$KUBE_BIN_DIR"
  rm -rf "$work"
}
