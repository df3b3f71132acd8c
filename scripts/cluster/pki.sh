#!/usr/bin/env bash
# The cluster's certificates and kubeconfigs, made locally with openssl (ECDSA P-256: fast to
# generate and accepted by every component). One identity per component, so RBAC sees who calls.
# Kept across restarts; `down.sh --purge` deletes them.
set -euo pipefail
. "$(dirname "$0")/common.sh"
pki="$STATE/pki"
mkdir -p "$pki" && cd "$pki"
[[ -f .complete ]] && exit 0

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1.key"; }
ca() { # NAME CN
  key "$1"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
cert() { # NAME SUBJECT USAGE(clientAuth|serverAuth) [SANS] [CA]
  local name=$1 subject=$2 usage=$3 sans=${4:-} signer=${5:-ca}
  key "$name"
  openssl req -new -key "$name.key" -subj "$subject" -out "$name.csr"
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [[ -n $sans ]] && echo "subjectAltName=$sans"
  } > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA "$signer.crt" -CAkey "$signer.key" -CAcreateserial \
    -days 365 -out "$name.crt" -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}
service_sans() { echo "DNS:$1.$2.svc,DNS:$1.$2.svc.cluster.local,IP:$NODE_IP"; }

ca ca tabserve-local-cluster-ca
# The aggregation layer (metrics.k8s.io, custom.metrics.k8s.io) authenticates the apiserver's
# proxied requests with a CA of its own.
ca front-proxy-ca tabserve-local-front-proxy-ca
cert front-proxy-client "/CN=front-proxy-client" clientAuth "" front-proxy-ca

cert apiserver "/CN=kube-apiserver" serverAuth \
  "DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:$APISERVER_SERVICE_IP,IP:$NODE_IP"
cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
cert kubelet-server "/CN=$NODE_NAME" serverAuth "DNS:$NODE_NAME,IP:$NODE_IP"
cert metrics-server-server "/CN=metrics-server" serverAuth "$(service_sans metrics-server kube-system)"
cert prometheus-adapter-server "/CN=prometheus-adapter" serverAuth "$(service_sans prometheus-adapter monitoring)"

# Client identities: the built-in RBAC roles bind the system:* names; rbac.yaml binds the rest.
declare -A identity=(
  [admin]="/O=system:masters/CN=tabserve-local-admin"
  [controller-manager]="/CN=system:kube-controller-manager"
  [scheduler]="/CN=system:kube-scheduler"
  [kubelet]="/O=system:nodes/CN=system:node:$NODE_NAME"
  [kube-proxy]="/CN=system:kube-proxy"
  [coredns]="/CN=tabserve-local:coredns"
  [metrics-server]="/CN=tabserve-local:metrics-server"
  [prometheus-adapter]="/CN=tabserve-local:prometheus-adapter"
  [prometheus]="/CN=tabserve-local:prometheus"
)
for user in "${!identity[@]}"; do
  cert "$user" "${identity[$user]}" clientAuth
  cat > "$user.kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: tabserve-local
  cluster:
    server: https://127.0.0.1:6443
    certificate-authority-data: $(base64 -w0 ca.crt)
users:
- name: $user
  user:
    client-certificate-data: $(base64 -w0 "$user.crt")
    client-key-data: $(base64 -w0 "$user.key")
contexts:
- name: tabserve-local
  context: {cluster: tabserve-local, user: $user}
current-context: tabserve-local
KUBECONFIG
done
# Service-account tokens are signed with this key.
key service-account
openssl ec -in service-account.key -pubout -out service-account.pub 2>/dev/null
chmod 600 ./*.key ./*.kubeconfig
touch .complete
log "certificates and kubeconfigs in $pki"
