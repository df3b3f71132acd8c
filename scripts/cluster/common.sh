# Sourced by every scripts/cluster/*.sh: versions, where things live, logging.
cluster_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$cluster_dir/versions.env"
repo_root="$(cd "$cluster_dir/../.." && pwd)"
# Built binaries, kept across clones and checkouts (keyed by version).
CACHE="${TABSERVE_CLUSTER_CACHE:-$HOME/.cache/tabserve/cluster}"
# This checkout's cluster: state, certificates, logs, pids, and the admin kubeconfig.
STATE="${TABSERVE_CLUSTER_STATE:-$repo_root/.cluster}"
log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
# PATH entries for every component build.sh makes, at the versions above.
components_path() {
  local entry path=""
  for entry in kubernetes:$KUBERNETES_VERSION etcd:$ETCD_VERSION coredns:$COREDNS_VERSION \
    metrics-server:$METRICS_SERVER_VERSION prometheus:$PROMETHEUS_VERSION \
    prometheus-adapter:$PROMETHEUS_ADAPTER_VERSION kube-state-metrics:$KUBE_STATE_METRICS_VERSION \
    helm:$HELM_VERSION; do
    path+="$CACHE/bin/${entry%%:*}-${entry#*:}:"
  done
  echo "${path%:}"
}
