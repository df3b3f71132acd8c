#!/usr/bin/env bash
# Stop every process up.sh started (by pid) and undo what it did to the host: pod sandboxes and
# their network namespaces, mounts, cgroups, iptables rules, the bridge and route, sysctls.
# Certificates and the images in containerd's store stay for the next `up.sh`, unless --purge.
set -uo pipefail
. "$(dirname "$0")/common.sh"
run="$STATE/run"
[[ -d $run ]] || { log "no cluster state in $STATE"; exit 0; }
export PATH="$(components_path):$PATH"

stop() { # NAME: TERM, then KILL after 10 s
  local pidfile="$run/$1.pid" pid
  [[ -f $pidfile ]] || return 0
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null && log "killed $1" || log "stopped $1"
  fi
  rm -f "$pidfile"
}
for name in prometheus-adapter kube-state-metrics prometheus metrics-server coredns kube-proxy \
  kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
  stop "$name"
done

# Containers outlive the kubelet (their shims are separate processes): kill and remove them,
# then stop containerd.
if [[ -S $run/containerd.sock ]]; then
  ctr_k8s() { ctr -a "$run/containerd.sock" -n k8s.io "$@"; }
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s KILL "$task" 2>/dev/null; done
  sleep 1
  for task in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$task" >/dev/null 2>&1; done
  for container in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$container" >/dev/null 2>&1; done
fi
stop containerd
# Shims whose containerd is gone (their socket lives under our state directory).
pkill -9 -f "containerd-shim-runc-v2 .*-address $run/containerd.sock" 2>/dev/null
# The shims' sockets and runc's state live under /run/containerd whatever containerd's root:
# remove them when no other containerd is left on the machine.
if ! pgrep -x containerd >/dev/null; then
  rm -rf /run/containerd/s /run/containerd/runc
  rmdir /run/containerd 2>/dev/null
fi

# Network namespaces of our pods (the CNI plugin named them cni-*; IPAM recorded each IP).
for ns in $(ip netns list 2>/dev/null | awk '/^cni-/{print $1}'); do ip netns delete "$ns"; done
rm -rf "$STATE/data/cni-ipam"
# kube-proxy's and the kubelet's iptables rules, then ours.
kube-proxy --cleanup >/dev/null 2>&1
for table in filter nat mangle; do
  for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
    iptables -t "$table" -S 2>/dev/null | awk -v c="$chain" '$0 ~ "-j "c"( |$)" && $1 == "-A" {sub("^-A", "-D"); print}' \
      | while read -r rule; do eval "iptables -t $table $rule" 2>/dev/null; done
  done
  for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
    iptables -t "$table" -F "$chain" 2>/dev/null
  done
  for chain in $(iptables -t "$table" -S 2>/dev/null | awk '/^-N KUBE-/{print $2}'); do
    iptables -t "$table" -X "$chain" 2>/dev/null
  done
done
for chain in TABSERVE-FORWARD TABSERVE-INPUT; do
  iptables -S 2>/dev/null | awk -v c="$chain" '$1 == "-A" && $0 ~ "-j "c"$" {sub("^-A", "-D"); print}' \
    | while read -r rule; do eval "iptables $rule"; done
  iptables -F "$chain" 2>/dev/null && iptables -X "$chain"
done
ip route del "$SERVICE_CIDR" dev "$BRIDGE" 2>/dev/null
ip link delete "$BRIDGE" 2>/dev/null

# Mounts under our state (pod volumes, containerd's snapshots) and the pods' cgroups.
grep -E " ($STATE|/run/containerd)[/ ]" /proc/mounts | awk '{print $2}' | sort -r | xargs -r -n1 umount -l 2>/dev/null
for hierarchy in /sys/fs/cgroup/*/; do
  [[ -d $hierarchy/kubepods ]] && find "$hierarchy/kubepods" -depth -type d -exec rmdir {} \; 2>/dev/null
done
# The kubelet's container log links for our pods.
rm -rf /var/log/pods/* /var/log/containers/*.log 2>/dev/null

[[ -f $run/sysctl.orig ]] && sysctl -q -p "$run/sysctl.orig" >/dev/null && rm -f "$run/sysctl.orig"
rm -rf "$STATE/data/etcd" "$STATE/data/kubelet" "$STATE/data/prometheus" "$STATE/data/containerd/state" "$STATE/kubeconfig"
if [[ ${1:-} == --purge ]]; then
  rm -rf "$STATE"
  log "cluster state removed"
fi
log "cluster stopped and host state restored"
