#!/usr/bin/env bash
# Builds one Kubernetes release (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet, kubectl) from the Go module proxy into $NVBIND_CACHE/k8s/<version>/bin. A small build
# module requires k8s.io/kubernetes and pins each of its staging modules (the `=> ./staging/...`
# replace lines of its go.mod) to the matching v0.x.y; etcd comes from etcdmain in a module of its
# own. Each step is skipped when its binary is already there. About 10 minutes on 2 cores, cold.
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.4}
cache=${NVBIND_CACHE:-/var/cache/nvbind}
dir=$cache/k8s/$K8S_VERSION
bin=$dir/bin
mkdir -p "$bin"

cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kubectl)
missing=()
for c in "${cmds[@]}"; do [ -x "$bin/$c" ] || missing+=("$c"); done

export CGO_ENABLED=0 GOFLAGS=-mod=mod
if [ ${#missing[@]} -gt 0 ]; then
  echo "building Kubernetes $K8S_VERSION: ${missing[*]} (about 10 minutes on 2 cores, cold)"
  mod=$dir/build
  mkdir -p "$mod"
  # The staging modules are released as v0.<minor>.<patch> alongside v1.<minor>.<patch>.
  staging=v0.${K8S_VERSION#v1.}
  kmod=$(cd "$mod" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
  {
    echo "module nvbind.test/k8s-build"
    echo
    echo "go 1.24.0"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/.*#replace \1 => \1 '"$staging"'#p' "$kmod"
  } >"$mod/go.mod"
  {
    echo "//go:build tools"
    echo
    echo "package tools"
    echo
    echo "import ("
    for c in "${cmds[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$c\""; done
    echo ")"
  } >"$mod/tools.go"
  ver=k8s.io/component-base/version
  ldflags="-s -w -X $ver.gitVersion=$K8S_VERSION -X $ver.gitMajor=1 -X $ver.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) -X $ver.gitTreeState=clean"
  ldflags="$ldflags -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  (cd "$mod" && go mod tidy -e >/dev/null 2>&1 || true
   for c in "${missing[@]}"; do
     echo "  $c"
     go build -trimpath -ldflags "$ldflags" -o "$bin/$c" "k8s.io/kubernetes/cmd/$c"
   done)
fi

if [ ! -x "$bin/etcd" ]; then
  echo "building etcd $ETCD_VERSION"
  emod=$dir/etcd-build
  mkdir -p "$emod"
  cat >"$emod/go.mod" <<MOD
module nvbind.test/etcd-build

go 1.24.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  cat >"$emod/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  (cd "$emod" && go mod tidy >/dev/null && go build -trimpath -ldflags '-s -w' -o "$bin/etcd" .)
fi
echo "Kubernetes $K8S_VERSION ready in $bin"
