#!/usr/bin/env bash
# Install the Debian packages listed in a package list (default scripts/system-packages.txt) that
# are not installed yet. Needs root (CI and the dev machines run as root); otherwise prints the
# apt-get command to run.
# Usage: install-system-packages.sh [LIST]
set -euo pipefail
list="${1:-$(dirname "$0")/system-packages.txt}"
missing=()
while read -r package _; do
  [[ -z "$package" || "$package" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$package")
done < "$list"
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "Missing Debian packages: ${missing[*]}" >&2
  echo "Install them with: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "Installing Debian packages: ${missing[*]}"
# Another apt process (e.g. unattended upgrades) may hold the lock for a while: wait for it.
export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -qq
apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
