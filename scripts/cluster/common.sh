# Sourced by every scripts/cluster/*.sh: versions, where things live, logging.
cluster_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$cluster_dir/versions.env"
repo_root="$(cd "$cluster_dir/../.." && pwd)"
# Built binaries, kept across clones and checkouts (keyed by version).
CACHE="${TABSERVE_CLUSTER_CACHE:-$HOME/.cache/tabserve/cluster}"
# This checkout's cluster: state, certificates, logs, pids, and the admin kubeconfig.
STATE="${TABSERVE_CLUSTER_STATE:-$repo_root/.cluster}"
log() { printf '[cluster %s] %s\n' "$(date +%T)" "$*" >&2; }
