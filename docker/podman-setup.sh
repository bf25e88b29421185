#!/usr/bin/env bash
# Podman on a fresh Debian 12 machine, set up to build and run this project's Dockerfile
# without a Docker engine or a reachable container registry (what `make image-test` needs).
#
#   docker/podman-setup.sh            # idempotent: a second run takes seconds
#   . .scoring/podman/env             # CONTAINERS_CONF, CONTAINERS_STORAGE_CONF, IMAGE_TEST_* for podman
#
# Steps (each prints its time):
#   1. tools:  apt-get install podman buildah runc debootstrap uidmap (skipped when present)
#   2. config: containers.conf + storage.conf (docker/podman/) copied into the scratch folder
#   3. pip:    a pip.conf folder that build steps mount (never copied into an image): the
#              machine's CA bundle, and a wheelhouse with the pyspark wheel this machine's pip
#              already built (pyspark ships only as an sdist: building it in the image costs ~5 min)
#   4. base:   a stand-in for python:3.11-slim-bookworm (no registry can be reached): debootstrap
#              --variant=minbase bookworm + python3, python3-venv, python3-pip, imported with
#              `podman import` as localhost/python:3.11-slim-bookworm. debootstrap's tarball is
#              cached, so a rerun after the image store was wiped takes seconds.
#
# Settings (environment): IMAGE_TEST_DIR (scratch folder; default .scoring/podman in the
# repository, git-ignored), DEBIAN_MIRROR (default http://deb.debian.org/debian), IMAGE_TEST_VENV
# (where to look for a built pyspark wheel's version; default .venv).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${IMAGE_TEST_DIR:-$ROOT/.scoring/podman}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
VENV="${IMAGE_TEST_VENV:-$ROOT/.venv}"
BASE_IMAGE="localhost/python:3.11-slim-bookworm"
# Bump when the debootstrap command below changes: the cached tarball is then rebuilt.
DEBOOTSTRAP_REVISION=1
DEBOOTSTRAP_TAR="$DIR/cache/debootstrap-bookworm-r$DEBOOTSTRAP_REVISION.tar"

say() { echo "[podman-setup] $*"; }
step() {  # step NAME FUNCTION: run it and print how long it took
  local started=$SECONDS
  "$2"
  say "$1: $((SECONDS - started)) s"
}

tools() {
  local missing=()
  for tool in podman buildah runc debootstrap newuidmap; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    say "tools present: $(podman --version), runc $(runc --version | awk 'NR==1{print $3}')"
    return
  fi
  say "installing podman buildah runc debootstrap uidmap (missing: ${missing[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq podman buildah runc debootstrap uidmap >/dev/null
}

config() {
  mkdir -p "$DIR/storage" "$DIR/run/libpod-tmp" "$DIR/tmp" "$DIR/cache"
  for name in containers.conf storage.conf; do
    sed "s|SCRATCH|$DIR|g" "$ROOT/docker/podman/$name" >"$DIR/$name.new"
    mv "$DIR/$name.new" "$DIR/$name"
  done
  cat >"$DIR/env" <<EOF
# Written by docker/podman-setup.sh: source it before calling podman for this project.
export CONTAINERS_CONF="$DIR/containers.conf"
export CONTAINERS_STORAGE_CONF="$DIR/storage.conf"
export IMAGE_TEST_DIR="$DIR"
export IMAGE_TEST_BASE="$BASE_IMAGE"
export IMAGE_TEST_PIP="$DIR/pip"
EOF
  export CONTAINERS_CONF="$DIR/containers.conf" CONTAINERS_STORAGE_CONF="$DIR/storage.conf"
  podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}} {{.Host.CgroupManager}}' |
    { read -r runtime driver cgroups; say "podman: runtime $runtime, storage $driver, cgroups $cgroups"; }
}

pip_folder() {
  # Mounted by `podman build -v "$DIR/pip:/root/.config/pip:ro"`: pip in the build steps reads
  # it as root's user config. A folder, not a file: a bind-mounted file leaves an empty file
  # behind in the image (buildah 1.28).
  mkdir -p "$DIR/pip/wheels"
  local bundle=/etc/ssl/certs/ca-certificates.crt
  {
    echo "[global]"
    if [ -r "$bundle" ]; then
      cp "$bundle" "$DIR/pip/ca-certificates.crt"
      echo "cert = /root/.config/pip/ca-certificates.crt"
    fi
    echo "find-links = /root/.config/pip/wheels"
    # A wheel in the wheelhouse wins over a newer sdist on the index.
    echo "prefer-binary = true"
  } >"$DIR/pip/pip.conf"
  local version
  version="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("pyspark"))' 2>/dev/null || true)"
  if [ -z "$version" ]; then
    say "no pyspark in $VENV: the full image builds pyspark from its sdist (~5 min)"
  elif compgen -G "$DIR/pip/wheels/pyspark-$version-*.whl" >/dev/null; then
    say "wheelhouse: pyspark $version already there"
  else
    # pip reuses the wheel it built when it installed the venv (its wheel cache): a copy.
    "$VENV/bin/pip" wheel --quiet --no-deps --wheel-dir "$DIR/pip/wheels" "pyspark==$version"
    say "wheelhouse: $(cd "$DIR/pip/wheels" && ls pyspark-*.whl)"
  fi
}

debootstrap_tar() {
  # The expensive part (~4 min on two cores), cached: Debian's minimal base with its Python.
  local root="$DIR/tmp/rootfs"
  rm -rf "$root"
  debootstrap --variant=minbase \
    --include=ca-certificates,netbase,tzdata,python3,python3-venv,python3-pip \
    bookworm "$root" "$MIRROR" >"$DIR/tmp/debootstrap.log" 2>&1 ||
    { tail -20 "$DIR/tmp/debootstrap.log" >&2; return 1; }
  tar --numeric-owner --xattrs -C "$root" -cf "$DEBOOTSTRAP_TAR.new" .
  mv "$DEBOOTSTRAP_TAR.new" "$DEBOOTSTRAP_TAR"
  rm -rf "$root"
}

slim() {
  # What the official slim image adds to Debian's base (seconds; applied to a fresh copy).
  local root="$1"
  case "$root" in "$DIR"/tmp/*) ;; *) echo "slim: refusing to edit $root" >&2; return 1 ;; esac
  # Its apt sources, and its dpkg path-excludes: later `apt-get install`s (the Dockerfile's
  # JRE) then also find no /usr/share/man, as they do on the real base.
  rm -f "$root/etc/apt/sources.list"
  printf '%s\n' "Types: deb" "URIs: $MIRROR" "Suites: bookworm bookworm-updates" "Components: main" \
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" "" \
    "Types: deb" "URIs: ${MIRROR%/debian}/debian-security" "Suites: bookworm-security" "Components: main" \
    "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg" >"$root/etc/apt/sources.list.d/debian.sources"
  printf '%s\n' "path-exclude /usr/share/doc/*" "path-include /usr/share/doc/*/copyright" \
    "path-exclude /usr/share/man/*" "path-exclude /usr/share/info/*" "path-exclude /usr/share/locale/*" \
    >"$root/etc/dpkg/dpkg.cfg.d/docker"
  # Its apt cleanup: no package caches (/var/cache/apt/*.bin, ~80 MB) left in any layer.
  local clean='"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"'
  printf '%s\n' "DPkg::Post-Invoke { $clean; };" "APT::Update::Post-Invoke { $clean; };" \
    'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' >"$root/etc/apt/apt.conf.d/docker-clean"
  find "$root/usr/share/doc" -mindepth 2 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root/usr/share/man" "$root/usr/share/info" "$root/usr/share/locale"/* "$root/var/cache/apt"/*.bin \
    "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/* "$root/var/log"/*
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
}

base() {
  if podman image exists "$BASE_IMAGE"; then
    say "base image $BASE_IMAGE present"
    return
  fi
  if [ ! -s "$DEBOOTSTRAP_TAR" ]; then
    say "debootstrap bookworm (cached afterwards as $DEBOOTSTRAP_TAR)"
    debootstrap_tar
  fi
  local root="$DIR/tmp/slim"
  rm -rf "$root" && mkdir -p "$root"
  tar --numeric-owner --xattrs -C "$root" -xpf "$DEBOOTSTRAP_TAR"
  slim "$root"
  # PIP_BREAK_SYSTEM_PACKAGES stands in for the official image's pip, which installs as
  # root without complaint; Debian's pip refuses (PEP 668) unless told.
  tar --numeric-owner --xattrs -C "$root" -cf "$DIR/tmp/base.tar" .
  rm -rf "$root"
  podman import --quiet \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_BREAK_SYSTEM_PACKAGES=1' \
    --change 'CMD ["python3"]' \
    "$DIR/tmp/base.tar" "$BASE_IMAGE" >/dev/null
  rm -f "$DIR/tmp/base.tar"
  say "base image $BASE_IMAGE: $(podman image inspect --format '{{.Size}}' "$BASE_IMAGE" | awk '{printf "%d MB", $1/1e6}')"
}

started=$SECONDS
step tools tools
step config config
step pip pip_folder
step base base
say "ready in $((SECONDS - started)) s; for podman: . $DIR/env"
