#!/usr/bin/env bash
# What runs, its memory, and how to reach the cluster.
set -euo pipefail
. "$(dirname "$0")/common.sh"
total=0
printf '%-24s %8s %10s\n' component pid "RSS MiB"
for pidfile in "$STATE"/run/*.pid; do
  [[ -e $pidfile ]] || continue
  name=$(basename "$pidfile" .pid) pid=$(cat "$pidfile")
  if rss=$(awk '/^VmRSS/{print int($2/1024)}' "/proc/$pid/status" 2>/dev/null); then
    printf '%-24s %8s %10s\n' "$name" "$pid" "$rss"; total=$((total + rss))
  else
    printf '%-24s %8s %10s\n' "$name" "$pid" "stopped"
  fi
done
printf '%-24s %8s %10s\n' total "" "$total"
echo "export KUBECONFIG=$STATE/kubeconfig   # Prometheus: http://127.0.0.1:$PROMETHEUS_PORT"
