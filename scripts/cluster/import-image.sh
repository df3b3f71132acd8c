#!/usr/bin/env bash
# Build the image of this checkout if needed (scripts/build-image.sh) and import it into the
# local cluster's containerd (namespace k8s.io, where the kubelet looks); prints its reference.
# Pods use it with imagePullPolicy Never/IfNotPresent: there is no registry.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"
cd "$repo_root"
image=$(bash scripts/build-image.sh)
ctr_k8s() { ctr -a "$STATE/run/containerd.sock" -n k8s.io "$@"; }
# An unqualified name is Docker Hub's to the kubelet, so that is the name it must have here.
if ! ctr_k8s images ls -q | grep -qx "docker.io/library/$image"; then
  log "importing $image into the node's containerd"
  archive=$(mktemp -u "${TMPDIR:-/tmp}/tabserve-image.XXXXXX.tar")
  buildah push -q "$image" "docker-archive:$archive:$image"
  ctr_k8s images import "$archive" >/dev/null
  rm -f "$archive"
fi
echo "$image"
