# etcd + kube-apiserver on loopback with RBAC on, certificates made with openssl, and two
# kubeconfigs: one for an admin (system:masters) and one for the operator's ServiceAccount.
# Sourced by hack/testbed.sh.
# shellcheck shell=bash

OPERATOR_NAMESPACE="${OPERATOR_NAMESPACE:-seapath-system}"
OPERATOR_SERVICE_ACCOUNT="${OPERATOR_SERVICE_ACCOUNT:-seapath-operator}"

kube_make_certs() {
  local pki=$1
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=seapath-testbed-ca" -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign"
    cat >server.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
EXT
    cat >client.ext <<EXT
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth
EXT
    openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=kube-apiserver"
    openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out server.crt -days 3650 -extfile server.ext
    openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=testbed-admin"
    openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out admin.crt -days 3650 -extfile client.ext
    openssl genrsa -out sa.key 2048
    openssl rsa -in sa.key -pubout -out sa.pub
  ) >"$TESTBED_DIR/logs/pki.log" 2>&1 || die "making certificates failed: read $TESTBED_DIR/logs/pki.log"
}

# Writes a kubeconfig; the last two arguments are either a client cert/key pair or "token" TOKEN.
kube_write_kubeconfig() {
  local path=$1 server=$2 ca=$3 user=$4 a=$5 b=$6
  local credentials
  if [ "$a" = token ]; then
    credentials="    token: $b"
  else
    credentials="    client-certificate: $a
    client-key: $b"
  fi
  cat >"$path" <<KC
apiVersion: v1
kind: Config
clusters:
- name: seapath-testbed
  cluster:
    server: $server
    certificate-authority: $ca
users:
- name: $user
  user:
$credentials
contexts:
- name: $user@seapath-testbed
  context:
    cluster: seapath-testbed
    user: $user
current-context: $user@seapath-testbed
KC
}

kube_up() {
  local dir="$TESTBED_DIR/kube"
  mkdir -p "$dir"
  local etcd_port etcd_peer_port api_port
  etcd_port=$(free_port)
  etcd_peer_port=$(free_port)
  api_port=${SEAPATH_APISERVER_PORT:-$(free_port)}
  require_free_port kube-apiserver "$api_port"
  echo "$api_port" >"$dir/apiserver-port"
  kube_make_certs "$dir/pki"

  start_daemon etcd "$KUBE_BIN_DIR/etcd" --name testbed --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "testbed=http://127.0.0.1:$etcd_peer_port" --unsafe-no-fsync --log-level warn
  wait_for etcd 30 "$TESTBED_DIR/logs/etcd.log" curl -sf "http://127.0.0.1:$etcd_port/health"

  local pki="$dir/pki"
  start_daemon kube-apiserver "$KUBE_BIN_DIR/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --tls-cert-file "$pki/server.crt" --tls-private-key-file "$pki/server.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode RBAC \
    --endpoint-reconciler-type none \
    --enable-priority-and-fairness=false \
    --profiling=false
  local server="https://127.0.0.1:$api_port"
  kube_write_kubeconfig "$dir/admin.kubeconfig" "$server" "$pki/ca.crt" testbed-admin "$pki/admin.crt" "$pki/admin.key"
  wait_for kube-apiserver 120 "$TESTBED_DIR/logs/kube-apiserver.log" \
    curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$server/readyz"

  local kubectl=("$KUBE_BIN_DIR/kubectl" --kubeconfig "$dir/admin.kubeconfig")
  "${kubectl[@]}" create namespace "$OPERATOR_NAMESPACE" >/dev/null
  "${kubectl[@]}" -n "$OPERATOR_NAMESPACE" create serviceaccount "$OPERATOR_SERVICE_ACCOUNT" >/dev/null
  local token
  token=$("${kubectl[@]}" -n "$OPERATOR_NAMESPACE" create token "$OPERATOR_SERVICE_ACCOUNT" --duration 48h)
  kube_write_kubeconfig "$dir/operator.kubeconfig" "$server" "$pki/ca.crt" \
    "system:serviceaccount:$OPERATOR_NAMESPACE:$OPERATOR_SERVICE_ACCOUNT" token "$token"
}

kube_env() {
  local dir="$TESTBED_DIR/kube"
  echo "export KUBECONFIG='$dir/admin.kubeconfig'"
  echo "export SEAPATH_OPERATOR_KUBECONFIG='$dir/operator.kubeconfig'"
  echo "export SEAPATH_OPERATOR_NAMESPACE='$OPERATOR_NAMESPACE'"
  echo "export SEAPATH_KUBECTL='$KUBE_BIN_DIR/kubectl'"
  echo "export PATH='$KUBE_BIN_DIR':\"\$PATH\""
}

kube_down() {
  stop_daemon kube-apiserver
  stop_daemon etcd
}
