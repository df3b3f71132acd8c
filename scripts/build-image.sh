#!/usr/bin/env bash
# Build the tabserve OCI image and print its reference, tabserve:<bento version> (also tagged
# tabserve:<project version>, the chart's appVersion).
#
#   scripts/build-image.sh        (what `make image` runs)
#
# 1. trains the models the store lacks (train.py --if-missing) and builds the bento
#    (bentofile.yaml: service, package, models, pinned Python packages);
# 2. makes sure the base image of bentofile.yaml exists (scripts/image-base.Containerfile), FROM
#    the upstream python image or, when no registry answers, a Debian bookworm root made with
#    debootstrap and cached in $TABSERVE_CACHE_DIR;
# 3. `bentoml containerize` (which copies the models into the build context) with the Docker
#    engine when one answers, otherwise daemonless with buildah. The image stays in the default
#    container storage (or the one CONTAINERS_STORAGE_CONF names), so `podman run <ref>` works.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
CACHE_DIR=${TABSERVE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tabserve}
BASE_IMAGE=$(sed -n 's/^ *base_image: *//p' bentofile.yaml)
UPSTREAM_PYTHON=docker.io/library/python:3.11-slim-bookworm
LOCAL_PYTHON=localhost/tabserve-debian-python:bookworm
ROOTFS_TAR=$CACHE_DIR/debian-bookworm-python3.11.tar
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE_RECIPE_LABEL=tabserve.base-recipe
export BENTOML_DO_NOT_TRACK=true
# BentoML passes no isolation flag to buildah; chroot works without a daemon or user namespaces.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

log() { echo "build-image: $*" >&2; }

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  ENGINE=docker
else
  ENGINE=buildah
fi

image_label() {  # image, label -> the label's value, empty when the image is missing
  if [[ $ENGINE == docker ]]; then
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
  else
    buildah inspect --type image --format "{{ index .OCIv1.Config.Labels \"$2\" }}" "$1" \
      2>/dev/null || true
  fi
}

debootstrap_python_root() {  # -> $ROOTFS_TAR: Debian bookworm minbase with Python 3.11 and pip
  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/tabserve-rootfs.XXXXXX")
  log "no registry answered: bootstrapping Debian bookworm into $root (about 2 minutes, once)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  mkdir -p "$CACHE_DIR"
  tar -C "$root" --numeric-owner -cf "$ROOTFS_TAR.partial" .
  mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
  rm -rf "$root" "$root.log"
}

python_base() {  # -> the image the base is built FROM
  if [[ $ENGINE == docker ]] || timeout 120 buildah pull --quiet "$UPSTREAM_PYTHON" >/dev/null 2>&1
  then
    echo "$UPSTREAM_PYTHON"
    return
  fi
  if ! buildah inspect --type image "$LOCAL_PYTHON" >/dev/null 2>&1; then
    [[ -f $ROOTFS_TAR ]] || debootstrap_python_root
    log "importing the cached Debian root $ROOTFS_TAR as $LOCAL_PYTHON"
    podman import --quiet --change 'CMD ["python3"]' "$ROOTFS_TAR" "$LOCAL_PYTHON" >/dev/null
  fi
  echo "$LOCAL_PYTHON"
}

ensure_base_image() {
  # The recipe's hash labels the base: editing the Containerfile or the CA bundle rebuilds it.
  local ca_bundle=/etc/ssl/certs/ca-certificates.crt uv_version recipe context from
  uv_version=$(sed -n 's/^uv==//p' constraints.txt)
  recipe=$(cat scripts/image-base.Containerfile "$ca_bundle" <(echo "$uv_version") \
    | sha256sum | cut -c1-16)
  if [[ $(image_label "$BASE_IMAGE" "$BASE_RECIPE_LABEL") == "$recipe" ]]; then
    log "base image $BASE_IMAGE is up to date"
    return
  fi
  from=$(python_base)
  context=$(mktemp -d)
  cp "$ca_bundle" "$context/ca-certificates.crt"
  log "building the base image $BASE_IMAGE from $from"
  # `buildah build` takes the same arguments as `docker build`.
  "$ENGINE" build --quiet --build-arg "PYTHON_BASE=$from" --build-arg "UV_VERSION=$uv_version" \
    --label "$BASE_RECIPE_LABEL=$recipe" -f scripts/image-base.Containerfile \
    -t "$BASE_IMAGE" "$context" >/dev/null
  rm -rf "$context"
}

log "training the models the store lacks"
"$BIN/python" train.py --if-missing >&2
bento=$("$BIN/bentoml" build --output tag | sed -n 's/^__tag__://p')
[[ -n $bento ]] || { log "bentoml build printed no tag"; exit 1; }
reference="tabserve:${bento#*:}"
log "built bento $bento"

ensure_base_image

log "containerizing $bento as $reference with $ENGINE"
containerize=("$BIN/bentoml" containerize "$bento" --backend "$ENGINE" --image-tag "$reference")
if [[ $ENGINE == buildah ]]; then
  # One layer for the bento's own steps: the compilers scripts/image-slim.sh removes leave no
  # trace in a lower layer. (Docker needs its experimental mode for --squash.)
  containerize+=(--opt squash)
fi
"${containerize[@]}" >&2
# Also the release's tag, tabserve:<project version>: the chart's appVersion, so a default
# `helm install` (image.tag empty) finds the image the last `make image` built.
release_reference="tabserve:$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
"$ENGINE" tag "$reference" "$release_reference"
log "also tagged $release_reference"
echo "$reference"
