#!/usr/bin/env bash
# Build the tabserve OCI image and print its reference, tabserve:<bento version> (also tagged
# tabserve:<project version>, the chart's appVersion).
#
#   scripts/build-image.sh        (what `make image` runs)
#
# 1. trains the models the store lacks (train.py --if-missing) and builds the bento
#    (bentofile.yaml: service, package, models, pinned Python packages);
# 2. makes sure the base image of bentofile.yaml exists (scripts/image-base.Containerfile), FROM
#    the python image named by digest in $TABSERVE_PYTHON_BASE or, by default, a Debian bookworm
#    root made with debootstrap (Release signature checked against debian-archive-keyring) and
#    cached in $TABSERVE_CACHE_DIR;
# 3. `bentoml containerize` (which copies the models into the build context) with the Docker
#    engine when one answers, otherwise daemonless with buildah. The image stays in the default
#    container storage (or the one CONTAINERS_STORAGE_CONF names), so `podman run <ref>` works.
#
# The build host's CA bundle is mounted into the build steps (buildah --volume), never copied:
# downloads work behind a TLS-intercepting proxy, and the image keeps Debian's own bundle.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-.venv/bin}
CACHE_DIR=${TABSERVE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tabserve}
BASE_IMAGE=$(sed -n 's/^ *base_image: *//p' bentofile.yaml)
# A registry's base only by digest: a tag can be moved to other content under the same name.
PINNED_PYTHON=${TABSERVE_PYTHON_BASE:-}
# "-signed": roots and images made before the signature check are not reused.
LOCAL_PYTHON=localhost/tabserve-debian-python:bookworm-signed
ROOTFS_TAR=$CACHE_DIR/debian-bookworm-python3.11-signed.tar
DEBOOTSTRAP_LOG=$ROOTFS_TAR.debootstrap.log
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DEBIAN_KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
HOST_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
BASE_RECIPE_LABEL=tabserve.base-recipe
export BENTOML_DO_NOT_TRACK=true
# BentoML passes no isolation flag to buildah; chroot works without a daemon or user namespaces.
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

log() { echo "build-image: $*" >&2; }

if command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  ENGINE=docker
  host_ca_mount=()  # `docker build` has no bind mounts: the image's own bundle is used
else
  ENGINE=buildah
  # Over the image's own bundle during RUN steps only; a bind mount is not committed.
  host_ca_mount=(--volume "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro")
fi

image_label() {  # image, label -> the label's value, empty when the image is missing
  if [[ $ENGINE == docker ]]; then
    docker image inspect --format "{{ index .Config.Labels \"$2\" }}" "$1" 2>/dev/null || true
  else
    buildah inspect --type image --format "{{ index .OCIv1.Config.Labels \"$2\" }}" "$1" \
      2>/dev/null || true
  fi
}

image_exists() {
  if [[ $ENGINE == docker ]]; then
    docker image inspect "$1" >/dev/null 2>&1
  else
    buildah inspect --type image "$1" >/dev/null 2>&1
  fi
}

debootstrap_python_root() {  # -> $ROOTFS_TAR: Debian bookworm minbase with Python 3.11 and pip
  local root
  root=$(mktemp -d "${TMPDIR:-/tmp}/tabserve-rootfs.XXXXXX")
  log "bootstrapping Debian bookworm into $root (about 2 minutes, once)"
  # --force-check-gpg: fail, rather than warn and go on, when the Release file's signature
  # cannot be checked; debootstrap then checks every package against the signed Release.
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    --keyring="$DEBIAN_KEYRING" --force-check-gpg \
    bookworm "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
    || { tail -20 "$root.log" >&2; exit 1; }
  grep -q '^I: Valid Release signature' "$root.log" \
    || { log "debootstrap reported no valid Release signature"; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  mkdir -p "$CACHE_DIR"
  tar -C "$root" --numeric-owner -cf "$ROOTFS_TAR.partial" .
  mv "$root.log" "$DEBOOTSTRAP_LOG"  # kept with the root: the record of its signature check
  mv "$ROOTFS_TAR.partial" "$ROOTFS_TAR"
  rm -rf "$root"
}

python_base() {  # -> the image the base is built FROM
  if [[ -n $PINNED_PYTHON ]]; then
    [[ $PINNED_PYTHON =~ @sha256:[0-9a-f]{64}$ ]] \
      || { log "TABSERVE_PYTHON_BASE must end in @sha256:<digest>: $PINNED_PYTHON"; exit 1; }
    echo "$PINNED_PYTHON"
    return
  fi
  if ! image_exists "$LOCAL_PYTHON"; then
    [[ -f $ROOTFS_TAR ]] || debootstrap_python_root
    log "importing the cached Debian root $ROOTFS_TAR as $LOCAL_PYTHON"
    if [[ $ENGINE == docker ]]; then
      docker import --change 'CMD ["python3"]' "$ROOTFS_TAR" "$LOCAL_PYTHON" >/dev/null
    else
      podman import --quiet --change 'CMD ["python3"]' "$ROOTFS_TAR" "$LOCAL_PYTHON" >/dev/null
    fi
  fi
  echo "$LOCAL_PYTHON"
}

ensure_base_image() {
  # The recipe's hash labels the base: editing the Containerfile, the pinned base or the uv pin
  # rebuilds it.
  local uv_version recipe from
  uv_version=$(sed -n 's/^uv==//p' constraints.txt)
  recipe=$(cat scripts/image-base.Containerfile <(echo "$uv_version $PINNED_PYTHON") \
    | sha256sum | cut -c1-16)
  if [[ $(image_label "$BASE_IMAGE" "$BASE_RECIPE_LABEL") == "$recipe" ]]; then
    log "base image $BASE_IMAGE is up to date"
    return
  fi
  from=$(python_base)
  log "building the base image $BASE_IMAGE from $from"
  # `buildah build` takes the same arguments as `docker build`, but for the CA mount.
  "$ENGINE" build --quiet "${host_ca_mount[@]}" --build-arg "PYTHON_BASE=$from" \
    --build-arg "UV_VERSION=$uv_version" --label "$BASE_RECIPE_LABEL=$recipe" \
    -f scripts/image-base.Containerfile -t "$BASE_IMAGE" scripts >/dev/null
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
  containerize+=(--opt squash --opt "volume=${host_ca_mount[1]}")
fi
"${containerize[@]}" >&2
# Also the release's tag, tabserve:<project version>: the chart's appVersion, so a default
# `helm install` (image.tag empty) finds the image the last `make image` built.
release_reference="tabserve:$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)"
"$ENGINE" tag "$reference" "$release_reference"
log "also tagged $release_reference"
echo "$reference"
