#!/usr/bin/env bash
# Bring up the single-node cluster: etcd, kube-apiserver, controller-manager, scheduler,
# containerd + kubelet (bridge CNI), kube-proxy, CoreDNS, metrics-server, Prometheus,
# kube-state-metrics and prometheus-adapter, each a host process whose pid is kept in
# $STATE/run. Idempotent: components already running are left alone.
# Writes the admin kubeconfig to $STATE/kubeconfig. The binaries come from build.sh (`make cluster`
# runs it first).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
t_start=$SECONDS
[[ $(id -u) -eq 0 ]] || { echo "make cluster needs root (network, mounts, cgroups)" >&2; exit 1; }
# The kubelet evicts at 5% free disk (config/kubelet.yaml), and its reclaim deletes the images
# imported into containerd, which no registry can give back (the pause image first: then no pod
# starts). Refuse to start without a margin above that.
mkdir -p "$STATE"
read -r disk_avail disk_size < <(df --output=avail,size -B1 "$STATE" | tail -1)
if (( disk_avail * 100 < disk_size * 10 )); then
  echo "make cluster needs 10% of the disk under $STATE free; $((disk_avail * 100 / disk_size))% is:" \
    "free space first (old clones, build caches)" >&2
  exit 1
fi

bash "$repo_root/scripts/install-system-packages.sh" "$here/system-packages.txt"
bash "$here/pki.sh"

export PATH="$(components_path):$PATH"
# apiserver, kubelet, metrics-server, prometheus-adapter
CLUSTER_PORTS=6443,10250,4443,6444
for binary in etcd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl \
  coredns metrics-server prometheus-adapter kube-state-metrics containerd prometheus; do
  command -v "$binary" >/dev/null || { echo "$binary is missing: run scripts/cluster/build.sh (make cluster)" >&2; exit 1; }
done
pki="$STATE/pki" etc="$STATE/etc" run="$STATE/run" logs="$STATE/logs" data="$STATE/data"
mkdir -p "$etc/cni" "$run" "$logs" "$data"/{etcd,kubelet,cni-ipam,prometheus}
export KUBECONFIG="$pki/admin.kubeconfig"

# --- configuration files, rendered from config/ -------------------------------------------------
export STATE NODE_NAME NODE_IP POD_CIDR SERVICE_CIDR BRIDGE KUBE_STATE_METRICS_PORT
render() { envsubst '${STATE} ${NODE_NAME} ${NODE_IP} ${POD_CIDR} ${SERVICE_CIDR} ${BRIDGE} ${KUBE_STATE_METRICS_PORT} ${CA_BUNDLE}' < "$here/config/$1" > "$2"; }
render containerd.toml "$etc/containerd.toml"
render cni.conflist "$etc/cni/10-tabserve-local.conflist"
render kubelet.yaml "$etc/kubelet.yaml"
render Corefile "$etc/Corefile"
render prometheus.yml "$etc/prometheus.yml"
CA_BUNDLE=$(base64 -w0 "$pki/ca.crt") render addons.yaml "$etc/addons.yaml"
echo "nameserver $NODE_IP" > "$etc/pod-resolv.conf"
# The adapter's rule is the one documented for real clusters (k8s/prometheus-adapter/values.yaml).
"$repo_root/.venv/bin/python" - "$repo_root/k8s/prometheus-adapter/values.yaml" "$etc/adapter-rules.yaml" <<'PY'
import sys, yaml
values = yaml.safe_load(open(sys.argv[1]))
yaml.safe_dump({"rules": values["rules"]["custom"]}, open(sys.argv[2], "w"), sort_keys=False)
PY
cp "$repo_root/observability/alerts.yaml" "$etc/alerts.yaml"

# --- host state: saved once so down.sh can put it back ------------------------------------------
sysctls=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet
  kernel.panic kernel.panic_on_oops vm.overcommit_memory vm.panic_on_oom kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes)
if [[ ! -f "$run/sysctl.orig" ]]; then
  for key in "${sysctls[@]}"; do echo "$key = $(sysctl -n "$key")"; done > "$run/sysctl.orig"
fi
restore_kernel_settings() { # the kubelet sets panic/overcommit defaults of its own at start
  grep -E '^(kernel|vm)\.' "$run/sysctl.orig" | sysctl -q -p - >/dev/null
}
# Pods sit on our bridge; the node's address is its gateway. Services are routed to the bridge
# (kube-proxy rewrites them to pod addresses), so nothing addressed to the cluster leaves here.
ip link show "$BRIDGE" >/dev/null 2>&1 || {
  ip link add "$BRIDGE" type bridge
  ip addr add "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
}
ip route show "$SERVICE_CIDR" | grep -q "$BRIDGE" || ip route add "$SERVICE_CIDR" dev "$BRIDGE"
# Routing between pods through a Service needs forwarding, and bridged replies must pass
# iptables for kube-proxy's NAT to be undone.
sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
# Guards: pods talk to each other and to the node, never beyond it (they have no default
# route either); the node's cluster ports answer only on loopback and the bridge.
if ! iptables -n -L TABSERVE-FORWARD >/dev/null 2>&1; then
  iptables -N TABSERVE-FORWARD
  iptables -A TABSERVE-FORWARD -i "$BRIDGE" -o "$BRIDGE" -j RETURN
  iptables -A TABSERVE-FORWARD -i "$BRIDGE" -j DROP
  iptables -A TABSERVE-FORWARD -o "$BRIDGE" -j DROP
  iptables -I FORWARD 1 -j TABSERVE-FORWARD
  iptables -N TABSERVE-INPUT
  iptables -A TABSERVE-INPUT -i lo -j RETURN
  iptables -A TABSERVE-INPUT -i "$BRIDGE" -j RETURN
  iptables -A TABSERVE-INPUT -j DROP
  iptables -I INPUT 1 -p tcp -m multiport --dports "$CLUSTER_PORTS" -j TABSERVE-INPUT
fi

# --- processes ------------------------------------------------------------------------------
running() { [[ -f "$run/$1.pid" ]] && kill -0 "$(cat "$run/$1.pid")" 2>/dev/null; }
start() { # NAME COMMAND...: start in the background unless already running
  local name=$1; shift
  running "$name" && return 0
  nohup "$@" >> "$logs/$name.log" 2>&1 &
  echo $! > "$run/$name.pid"
  log "started $name (pid $!)"
}
wait_for() { # WHAT SECONDS COMMAND...: poll once a second
  local what=$1 seconds=$2; shift 2
  for ((i = 0; i < seconds; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  log "$what not ready after ${seconds}s; last lines of its log:"
  tail -20 "$logs/${what%% *}.log" >&2 || true
  exit 1
}
api_ok() { kubectl get --raw "$1"; }

start etcd etcd --name tabserve-local --data-dir "$data/etcd" \
  --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
  --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
  --initial-cluster tabserve-local=http://127.0.0.1:2380 --listen-metrics-urls http://127.0.0.1:2381 \
  --quota-backend-bytes 1073741824
wait_for etcd 60 curl -sf http://127.0.0.1:2381/health

start kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --secure-port=6443 --advertise-address="$NODE_IP" \
  --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
  --allow-privileged=true --client-ca-file="$pki/ca.crt" \
  --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
  --kubelet-client-certificate="$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key="$pki/apiserver-kubelet-client.key" \
  --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/service-account.pub" \
  --service-account-signing-key-file="$pki/service-account.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" \
  --requestheader-client-ca-file="$pki/front-proxy-ca.crt" \
  --requestheader-allowed-names=front-proxy-client \
  --requestheader-extra-headers-prefix=X-Remote-Extra- \
  --requestheader-group-headers=X-Remote-Group --requestheader-username-headers=X-Remote-User \
  --proxy-client-cert-file="$pki/front-proxy-client.crt" \
  --proxy-client-key-file="$pki/front-proxy-client.key" --enable-aggregator-routing=true \
  --profiling=false --v=1
wait_for kube-apiserver 120 api_ok /readyz

start kube-controller-manager kube-controller-manager --kubeconfig="$pki/controller-manager.kubeconfig" \
  --authentication-kubeconfig="$pki/controller-manager.kubeconfig" \
  --authorization-kubeconfig="$pki/controller-manager.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
  --cluster-signing-cert-file="$pki/ca.crt" --cluster-signing-key-file="$pki/ca.key" \
  --root-ca-file="$pki/ca.crt" --service-account-private-key-file="$pki/service-account.key" \
  --service-cluster-ip-range="$SERVICE_CIDR" --horizontal-pod-autoscaler-sync-period=10s \
  --profiling=false --v=1
start kube-scheduler kube-scheduler --kubeconfig="$pki/scheduler.kubeconfig" \
  --authentication-kubeconfig="$pki/scheduler.kubeconfig" \
  --authorization-kubeconfig="$pki/scheduler.kubeconfig" \
  --bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1

start containerd containerd --config "$etc/containerd.toml"
wait_for containerd 60 ctr -a "$run/containerd.sock" version
ctr_k8s() { ctr -a "$run/containerd.sock" -n k8s.io "$@"; }
if ! ctr_k8s images ls -q | grep -q 'tabserve-local/pause:1.0'; then
  # The pod sandbox image, from our own pause.c: a static binary alone in an image.
  gcc -Os -static -o "$run/pause" "$here/pause.c" && strip "$run/pause"
  container=$(buildah from scratch)
  buildah copy -q "$container" "$run/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "$container"
  buildah commit -q --rm "$container" localhost/tabserve-local/pause:1.0 >/dev/null
  rm -f "$run/pause.tar"
  buildah push -q localhost/tabserve-local/pause:1.0 "docker-archive:$run/pause.tar:localhost/tabserve-local/pause:1.0"
  ctr_k8s images import "$run/pause.tar" >/dev/null && rm -f "$run/pause.tar"
fi

# --containerd: the kubelet's embedded cAdvisor asks containerd for container names (the
# `container` label of container_* metrics) at its own default socket unless told ours.
start kubelet kubelet --config="$etc/kubelet.yaml" --kubeconfig="$pki/kubelet.kubeconfig" \
  --root-dir="$data/kubelet" --hostname-override="$NODE_NAME" --node-ip="$NODE_IP" \
  --containerd="$run/containerd.sock" --v=1
start kube-proxy kube-proxy --kubeconfig="$pki/kube-proxy.kubeconfig" --cluster-cidr="$CLUSTER_CIDR" \
  --proxy-mode=iptables --hostname-override="$NODE_NAME" --conntrack-max-per-core=0 \
  --iptables-localhost-nodeports=false --bind-address=127.0.0.1 \
  --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 --v=1
node_ready() { kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' | grep -q True; }
wait_for kubelet 120 node_ready
restore_kernel_settings

kubectl apply -f "$etc/addons.yaml" >/dev/null
start coredns coredns -conf "$etc/Corefile"
start metrics-server metrics-server --secure-port=4443 --bind-address="$NODE_IP" \
  --tls-cert-file="$pki/metrics-server-server.crt" --tls-private-key-file="$pki/metrics-server-server.key" \
  --kubeconfig="$pki/metrics-server.kubeconfig" \
  --authentication-kubeconfig="$pki/metrics-server.kubeconfig" \
  --authorization-kubeconfig="$pki/metrics-server.kubeconfig" \
  --kubelet-certificate-authority="$pki/ca.crt" --kubelet-preferred-address-types=InternalIP \
  --kubelet-use-node-status-port --metric-resolution=15s
start prometheus prometheus --config.file="$etc/prometheus.yml" --storage.tsdb.path="$data/prometheus" \
  --storage.tsdb.retention.time=2d --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
start kube-state-metrics kube-state-metrics --kubeconfig="$pki/prometheus.kubeconfig" \
  --host=127.0.0.1 --port="$KUBE_STATE_METRICS_PORT" --telemetry-host=127.0.0.1 \
  --telemetry-port=$((KUBE_STATE_METRICS_PORT + 1)) \
  --resources=deployments,replicasets,pods,horizontalpodautoscalers,jobs
start prometheus-adapter prometheus-adapter --secure-port=6444 --bind-address="$NODE_IP" \
  --tls-cert-file="$pki/prometheus-adapter-server.crt" \
  --tls-private-key-file="$pki/prometheus-adapter-server.key" \
  --lister-kubeconfig="$pki/prometheus-adapter.kubeconfig" \
  --authentication-kubeconfig="$pki/prometheus-adapter.kubeconfig" \
  --authorization-kubeconfig="$pki/prometheus-adapter.kubeconfig" \
  --prometheus-url="http://127.0.0.1:$PROMETHEUS_PORT/" --config="$etc/adapter-rules.yaml" \
  --metrics-relist-interval=15s
wait_for coredns 60 curl -sf http://127.0.0.1:8082/health
wait_for prometheus 60 curl -sf "http://127.0.0.1:$PROMETHEUS_PORT/-/ready"
wait_for metrics-server 120 api_ok /apis/metrics.k8s.io/v1beta1/nodes
wait_for prometheus-adapter 120 api_ok /apis/custom.metrics.k8s.io/v1beta1

install -m 600 "$pki/admin.kubeconfig" "$STATE/kubeconfig"
log "cluster up in $((SECONDS - t_start)) s"
bash "$here/status.sh"
