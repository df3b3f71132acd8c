#!/usr/bin/env bash
# Build and import the image of this checkout, then install or upgrade the chart into the local
# cluster (release tabserve, namespace tabserve) with the local values and wait for the rollout.
# Extra arguments go to `helm upgrade` (e.g. --set config.maxInstances=500).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
cd "$repo_root"
export KUBECONFIG="$STATE/kubeconfig"
[[ -f $KUBECONFIG ]] || { echo "no local cluster: run make cluster first" >&2; exit 1; }
export PATH="$(components_path):$PATH"

image=$(bash "$here/import-image.sh")
log "installing $image as release tabserve in namespace tabserve"
helm upgrade --install tabserve helm/tabserve --namespace tabserve --create-namespace \
  -f helm/tabserve/ci/local-cluster-values.yaml \
  --set image.repository="${image%%:*}" --set image.tag="${image#*:}" \
  --wait --timeout 10m "$@" >&2
cluster_ip=$(kubectl -n tabserve get service tabserve -o jsonpath='{.spec.clusterIP}')
echo "tabserve answers at http://$cluster_ip:3000 (gRPC $cluster_ip:8001)"
