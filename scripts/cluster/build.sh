#!/usr/bin/env bash
# Build the local cluster's binaries from the Go module proxy, once per version.
#
# Each component is built in a throw-away Go module under $CACHE/src/<name>-<version> and its
# binaries land in $CACHE/bin/<name>-<version>/; a directory that is already complete is skipped,
# so a second run costs nothing and a version bump rebuilds only that component.
# Usage: build.sh [component ...]   (default: all)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/common.sh"

export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
ldflags="-s -w"

# build_module NAME VERSION MODULE@VERSION [BINARY=]PKG... : `go build` packages of one module at
# one version; BINARY names the output where the package path does not (".../server/v3").
build_module() {
  local name=$1 version=$2 module=$3; shift 3
  local out="$CACHE/bin/$name-$version" src="$CACHE/src/$name-$version"
  [[ -f "$out/.complete" ]] && return 0
  log "building $name $version"
  local t0=$SECONDS
  rm -rf "$src" "$out" && mkdir -p "$src" "$out"
  (
    cd "$src"
    go mod init "tabserve.local/build/$name" >/dev/null 2>&1
    if [[ $name == kubernetes ]]; then
      # k8s.io/kubernetes points its staging modules (k8s.io/api, ...) at ./staging: pin each to
      # the published release of the same minor, as the release's own go.mod does with replace.
      local gomod staging_version="v0.${version#v1.}"
      gomod=$(go mod download -json "k8s.io/kubernetes@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
      awk '/=> \.\/staging\/src\//{print $1}' "$gomod" | while read -r staged; do
        go mod edit -replace="$staged=$staged@$staging_version"
      done
    fi
    go get "$module" >/dev/null 2>&1 || go get "$module"
    for spec in "$@"; do
      local binary=${spec%%=*} pkg=${spec#*=}
      [[ $spec == *=* ]] || binary=$(basename "$pkg")
      go build -trimpath -ldflags "$ldflags" ${tags:+-tags "$tags"} -o "$out/$binary" "$pkg"
    done
  )
  touch "$out/.complete"
  log "built $name $version in $((SECONDS - t0)) s: $(cd "$out" && ls | tr '\n' ' ')"
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION minor=${KUBERNETES_VERSION#v1.}; minor=${minor%%.*}
  # The version stamped into the binaries: kubectl version and the apiserver's /version show it.
  local stamp=""
  for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    stamp+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  ldflags="-s -w$stamp" build_module kubernetes "$v" "k8s.io/kubernetes@$v" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kubectl
}
build_etcd() {
  build_module etcd "$ETCD_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" etcd=go.etcd.io/etcd/server/v3
}
build_coredns() {
  build_module coredns "$COREDNS_VERSION" "github.com/coredns/coredns@$COREDNS_VERSION" github.com/coredns/coredns
}
build_metrics_server() {
  build_module metrics-server "$METRICS_SERVER_VERSION" "sigs.k8s.io/metrics-server@$METRICS_SERVER_VERSION" \
    sigs.k8s.io/metrics-server/cmd/metrics-server
}
build_prometheus_adapter() {
  build_module prometheus-adapter "$PROMETHEUS_ADAPTER_VERSION" \
    "sigs.k8s.io/prometheus-adapter@$PROMETHEUS_ADAPTER_VERSION" prometheus-adapter=sigs.k8s.io/prometheus-adapter/cmd/adapter
}
build_kube_state_metrics() {
  build_module kube-state-metrics "$KUBE_STATE_METRICS_VERSION" \
    "k8s.io/kube-state-metrics/v2@$KUBE_STATE_METRICS_VERSION" kube-state-metrics=k8s.io/kube-state-metrics/v2
}
build_prometheus() {
  # Debian's Prometheus is built without Kubernetes service discovery; this one has only that
  # (Prometheus' own build tags leave the other discovery plugins out).
  tags=remove_all_sd,enable_kubernetes_sd build_module prometheus "$PROMETHEUS_VERSION" \
    "github.com/prometheus/prometheus@$PROMETHEUS_VERSION" github.com/prometheus/prometheus/cmd/prometheus
}
build_helm() {
  build_module helm "$HELM_VERSION" "helm.sh/helm/v3@$HELM_VERSION" helm.sh/helm/v3/cmd/helm
}
# Not part of the cluster: tests/test_kustomize.py builds k8s/ with it (`build.sh kustomize`).
build_kustomize() {
  build_module kustomize "$KUSTOMIZE_VERSION" "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION" \
    kustomize=sigs.k8s.io/kustomize/kustomize/v5
}

components=("${@:-kubernetes etcd coredns metrics_server prometheus prometheus_adapter kube_state_metrics helm}")
for component in ${components[*]}; do
  "build_${component//-/_}"
done
