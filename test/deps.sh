#!/usr/bin/env bash
# Usage: test/deps.sh [packages] [lint] [containerd] [helm] [docker] [cross] (default: the first three). `make deps`
# installs the Debian packages only, which is all `make demo` needs; `make lint` and
# `make test` ask for the rest.
# Installs what building, the demo and the tests need on a fresh Debian 12 (as root):
# Debian packages, a pinned golangci-lint, and containerd 2.x and 1.7 built from the Go
# module proxy. Tools go to $NVBIND_CACHE/bin (default /var/cache/nvbind/bin); each step is
# skipped when already done.
set -euo pipefail

cache=${NVBIND_CACHE:-/var/cache/nvbind}
bin=$cache/bin
GOLANGCI_LINT_VERSION=v2.15.0
CONTAINERD_VERSION=v2.4.2
CONTAINERD17_VERSION=v1.7.35 # the newest 1.7 (Debian 13, Ubuntu 24.04 ship 1.7)
DOCKER_VERSION=v2.0.0-beta.24 # Docker Engine 29
RUNC_VERSION=v1.2.6
HELM_VERSION=v4.3.1 # Helm 3 had its last security fix in November 2026
mkdir -p "$bin"

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(packages lint containerd)
wants() { [[ " ${want[*]} " == *" $1 "* ]]; }

need=()
wants packages && for p in build-essential musl-tools podman runc busybox-static uidmap util-linux iproute2 python3 binutils systemd containernetworking-plugins; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# Docker Engine: runc with seccomp needs libseccomp's headers
wants docker && for p in libseccomp-dev pkg-config; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
# arm64: Debian's cross compiler for the cgo part, and qemu-user to run the result
wants cross && for p in gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

export GOBIN=$bin
export CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations"
if wants lint && ! "$bin/golangci-lint" version 2>/dev/null | grep -q "${GOLANGCI_LINT_VERSION#v}"; then
  echo "installing golangci-lint $GOLANGCI_LINT_VERSION"
  go install "github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$GOLANGCI_LINT_VERSION"
fi
if wants containerd && ! "$bin/containerd" --version 2>/dev/null | grep -q " ${CONTAINERD_VERSION#v}"; then
  echo "building containerd $CONTAINERD_VERSION (a few minutes on 2 cores)"
  go install -tags no_btrfs "github.com/containerd/containerd/v2/cmd/containerd@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
fi
# containerd 1.7 beside it, in its own folder, for the NRI suite on the older NRI
c17_bin=$cache/containerd-1.7/bin
if wants containerd && { ! "$c17_bin/containerd" --version 2>/dev/null | grep -q " ${CONTAINERD17_VERSION#v}" ||
  [ ! -x "$c17_bin/ctr" ] || [ ! -x "$c17_bin/containerd-shim-runc-v2" ]; }; then
  echo "building containerd $CONTAINERD17_VERSION (a few minutes on 2 cores)"
  mkdir -p "$c17_bin"
  # its go.mod has an exclude directive, which go install pkg@version refuses: build in
  # the module's own folder, as its main module
  (cd / && GOFLAGS= GOWORK=off go mod download "github.com/containerd/containerd@$CONTAINERD17_VERSION")
  src=$(go env GOMODCACHE)/github.com/containerd/containerd@$CONTAINERD17_VERSION
  [ -d "$src/cmd/containerd" ] || { echo "containerd $CONTAINERD17_VERSION: no source in $src" >&2; exit 1; }
  (cd "$src" && GOFLAGS=-mod=readonly GOWORK=off go build -tags no_btrfs -o "$c17_bin/" ./cmd/containerd ./cmd/ctr ./cmd/containerd-shim-runc-v2)
fi
# helm, for the chart's tests and the cluster test's helm install
if wants helm && ! "$bin/helm" version --short 2>/dev/null | grep -q "^${HELM_VERSION}+"; then
  echo "building helm $HELM_VERSION (a few minutes on 2 cores)"
  (cd "$(mktemp -d)" && go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION")
fi
# Docker Engine 29 (moby's dockerd) and a runc that knows time namespaces, into their own
# folder so that Debian's runc stays the default everywhere else
docker_bin=$cache/docker
if wants docker && [ "$(cat "$docker_bin/.versions" 2>/dev/null)" != "$DOCKER_VERSION $RUNC_VERSION" ]; then
  echo "building dockerd $DOCKER_VERSION and runc $RUNC_VERSION (several minutes on 2 cores)"
  mkdir -p "$docker_bin"
  (cd "$(mktemp -d)" && GOBIN=$docker_bin GOFLAGS=-mod=mod go install "github.com/moby/moby/v2/cmd/dockerd@$DOCKER_VERSION")
  (cd "$(mktemp -d)" && GOBIN=$docker_bin go install -tags seccomp "github.com/opencontainers/runc@$RUNC_VERSION")
  echo "$DOCKER_VERSION $RUNC_VERSION" > "$docker_bin/.versions"
fi
echo "dependencies ready (${want[*]}) in $bin"
