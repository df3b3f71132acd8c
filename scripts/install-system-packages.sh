#!/usr/bin/env bash
# Install the Debian packages of a package list (default scripts/system-packages.txt) whose
# programs or files are missing. Each line of the list: package, what it provides that we look
# for (programs on PATH or absolute paths, comma-separated), the test suites that need it.
#
# Installs with apt-get as root, or through sudo when sudo needs no password. When it cannot
# (not root and no such sudo, or no apt-get: not Debian) it prints each missing package with the
# suites that will skip without it, and exits 0 so every other suite still runs; unless CI is
# set: CI installs everything, and a package it lacks fails the run instead of skipping tests.
# Usage: install-system-packages.sh [LIST]
set -euo pipefail
here=.; [[ $0 == */* ]] && here=${0%/*}  # no dirname: the check needs no program at all
list="${1:-$here/system-packages.txt}"
# Programs such as runc and debootstrap live in sbin, which a user's PATH often leaves out.
PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=() lines=()
while read -r package provides suites; do
  [[ -z "$package" || "$package" == \#* ]] && continue
  [[ -n $provides ]] || { echo "$list: $package names nothing to look for" >&2; exit 2; }
  absent=()
  IFS=, read -ra wanted <<< "$provides"
  for item in "${wanted[@]}"; do
    if [[ $item == /* ]]; then [[ -e $item ]] || absent+=("$item")
    else command -v "$item" >/dev/null || absent+=("$item"); fi
  done
  [[ ${#absent[@]} -eq 0 ]] && continue
  missing+=("$package")
  lines+=("$(printf '  %-23s no %s; skipped: %s' "$package" "${absent[*]}" "${suites:-no test suite}")")
done < "$list"
[[ ${#missing[@]} -eq 0 ]] && exit 0

sudo=()
if ! command -v apt-get >/dev/null; then
  cannot="there is no apt-get (not a Debian system)"
elif [[ $EUID -eq 0 ]]; then
  cannot=""
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  cannot="" sudo=(sudo -n)
else
  cannot="not root, and no sudo that needs no password"
fi

if [[ -z $cannot ]]; then
  echo "Installing Debian packages: ${missing[*]}"
  # Another apt process (e.g. unattended upgrades) may hold the lock for a while: wait for it.
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 update -qq
  "${sudo[@]}" apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}"
  exit 0
fi
{
  echo "Missing Debian packages, not installed: $cannot."
  printf '%s\n' "${lines[@]}"
  echo "Install them with: sudo apt-get install -y ${missing[*]}"
  if [[ -n ${CI:-} ]]; then
    echo "CI is set: a missing package fails the run (CI must run every suite)."
    exit 1
  fi
  echo "Every other suite runs; these are skipped, each naming its package."
} >&2
