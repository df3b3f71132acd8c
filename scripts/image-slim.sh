#!/usr/bin/env bash
# Runs inside the image build, after the Python packages are installed (bentofile.yaml
# docker.setup_script). BentoML's Dockerfile installs build-essential and git for packages that
# compile at install time; every package we pin ships a wheel, so the toolchain goes again here
# (the build squashes its layers, so it costs no space either).
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# Named one by one: Debian's python3-pip recommends build-essential, which keeps the compilers
# out of reach of a plain --auto-remove.
apt-get purge -y -q --auto-remove -o APT::AutoRemove::RecommendsImportant=false \
  build-essential gcc g++ cpp make dpkg-dev libc6-dev binutils git gnupg2 >/dev/null
apt-get clean
rm -rf /var/lib/apt/lists/* /root/.cache
for tool in gcc cc c++ g++ cpp make ld as git; do
  if command -v "$tool" >/dev/null; then
    echo "image-slim: $tool is still installed" >&2
    exit 1
  fi
done
