#!/usr/bin/env bash
# Builds test driver roots from Debian's real NVIDIA user-space packages.
#
#   test/driverroot/build.sh [OUTDIR]     (default /var/tmp/nvbind-roots)
#
# Each root is a small "host": driver files in a real layout, plus proc/, sys/ and dev/ trees
# (char nodes made with mknod when run as root) so it serves as --driver-root and --dev-root.
#   debian-535  Debian 12's own layout (nvidia/current + /etc/alternatives links), with i386 libraries
#               for compat32, ld.so.cache by ldconfig -r
#   flat-535    the .run installer's flat layout in /usr/lib/x86_64-linux-gnu, ld.so.cache by ldconfig -r
#   debian-535-upgrade  debian-535 after Debian's security update to 535.309.01
#   lib64-470   another branch (tesla-470) in a RHEL-style flat /usr/lib64 layout, no ld.so.cache, with every
#               library of the packages (libnvidia-nvvm.so.4.0.0 has no driver version in its name or contents)
# Packages are downloaded once into $NVBIND_CACHE (default /var/cache/nvbind) and never committed.
set -euo pipefail

out=${1:-/var/tmp/nvbind-roots}
cache=${NVBIND_CACHE:-/var/cache/nvbind}
here=$(cd "$(dirname "$0")" && pwd)
stamp_want=$(cat "$0" | sha256sum | cut -c1-16)

v535=535.261.03
v535u=535.309.01
v470=470.256.02
pkgs535="firmware-nvidia-gsp libcuda1 libcudadebugger1 libegl-nvidia0 libgl1-nvidia-glvnd-glx libgles-nvidia1
 libgles-nvidia2 libglx-nvidia0 libnvcuvid1 libnvidia-allocator1 libnvidia-api1 libnvidia-cfg1 libnvidia-eglcore
 libnvidia-encode1 libnvidia-fbc1 libnvidia-glcore libnvidia-glvkspirv libnvidia-ml1 libnvidia-ngx1 libnvidia-nvvm4
 libnvidia-opticalflow1 libnvidia-pkcs11-openssl3 libnvidia-ptxjitcompiler1 libnvidia-rtcore libnvoptix1
 nvidia-alternative nvidia-cuda-mps nvidia-egl-icd nvidia-smi nvidia-vdpau-driver nvidia-vulkan-icd
 xserver-xorg-video-nvidia nvidia-driver-bin nvidia-egl-common nvidia-vulkan-common nvidia-opencl-icd"
pkgs470="libcuda1 libnvidia-ml1 libnvidia-ptxjitcompiler1 libnvidia-nvvm4 libnvcuvid1 libnvidia-encode1
 libnvidia-opticalflow1 libnvidia-fbc1 libnvidia-cfg1 libnvidia-allocator1 libnvidia-eglcore libnvidia-glcore
 libnvidia-glvkspirv libnvidia-rtcore libnvidia-nvoptix1 libnvidia-ngx1 libegl-nvidia-0 libglx-nvidia-0
 libgles-nvidia-1 libgles-nvidia-2 libnvidia-cbl libnvidia-compiler smi driver-bin"

if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp_want" ]; then
  echo "driver roots up to date in $out"; exit 0
fi

ensure_sources() {
  if ! apt-cache policy libcuda1 2>/dev/null | grep -q "$v535"; then
    cat > /etc/apt/sources.list.d/nvbind-nonfree.sources <<SRC
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: contrib non-free non-free-firmware
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get update -qq
  fi
}

download() { # dir version pkg...
  local dir=$1 ver=$2; shift 2
  mkdir -p "$dir"
  local want=() p
  for p in "$@"; do ls "$dir/${p}_"*.deb >/dev/null 2>&1 || want+=("$p=$ver"); done
  [ ${#want[@]} -eq 0 ] && return 0
  ensure_sources
  (cd "$dir" && apt-get download -qq "${want[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  for p in "$@"; do ls "$dir/${p}_"*.deb >/dev/null 2>&1 || { echo "missing package $p=$ver in $dir" >&2; exit 1; }; done
}

download "$cache/debs/$v535" "$v535-1" $pkgs535
# 32-bit libraries (compat32), through a private i386 package index: the host's apt
# configuration stays amd64 only
pkgs535_i386="libcuda1 libnvidia-ml1 libnvidia-ptxjitcompiler1"
mkdir -p "$cache/debs/$v535-i386"
need32=(); for p in $pkgs535_i386; do ls "$cache/debs/$v535-i386/${p}_"*.deb >/dev/null 2>&1 || need32+=("$p:i386=$v535-1"); done
if [ ${#need32[@]} -gt 0 ]; then
  ensure_sources
  mkdir -p "$cache/i386-lists/partial"
  i386=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64,i386 "-oDir::State::Lists=$cache/i386-lists")
  apt-get "${i386[@]}" update -qq >/dev/null 2>&1 || true
  (cd "$cache/debs/$v535-i386" && apt-get "${i386[@]}" download -qq "${need32[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true)
  for p in $pkgs535_i386; do ls "$cache/debs/$v535-i386/${p}_"*.deb >/dev/null 2>&1 || { echo "missing package $p:i386=$v535-1" >&2; exit 1; }; done
fi
download "$cache/debs/$v535u" "$v535u-0+deb12u1" $pkgs535
n470=(); for p in $pkgs470; do
  case $p in libegl-nvidia-0) n470+=(libegl-nvidia-tesla-470-0);; libglx-nvidia-0) n470+=(libglx-nvidia-tesla-470-0);;
    libgles-nvidia-1) n470+=(libgles-nvidia-tesla-470-1);; libgles-nvidia-2) n470+=(libgles-nvidia-tesla-470-2);;
    smi) n470+=(nvidia-tesla-470-smi);; driver-bin) n470+=(nvidia-tesla-470-driver-bin);;
    lib*) n470+=("libnvidia-tesla-470-${p#libnvidia-}");; esac; done
n470=("${n470[@]/libnvidia-tesla-470-libcuda1/libnvidia-tesla-470-cuda1}")
n470=("${n470[@]/libnvidia-tesla-470-libnvcuvid1/libnvidia-tesla-470-nvcuvid1}")
download "$cache/debs/$v470" "$v470-1~deb12u1" "${n470[@]}"
# nvidia-persistenced is its own source package in contrib with its own version
ls "$cache/debs/$v535"/nvidia-persistenced_*.deb >/dev/null 2>&1 || {
  ensure_sources; (cd "$cache/debs/$v535" && apt-get download -qq nvidia-persistenced 2>&1 | grep -v '^W: ' || true); }
ls "$cache/debs/$v535u"/nvidia-persistenced_*.deb >/dev/null 2>&1 || cp "$cache/debs/$v535"/nvidia-persistenced_*.deb "$cache/debs/$v535u/"

rm -rf "$out.tmp"; mkdir -p "$out.tmp"

# --- host side: proc, sys, dev -------------------------------------------------------------
host_tree() { # root version flavour gpus...
  local r=$1 ver=$2 flavour=$3; shift 3
  mkdir -p "$r/proc/driver/nvidia/gpus" "$r/proc/driver/nvidia-caps" "$r/dev/nvidia-caps" "$r/dev/dri" \
    "$r/dev/nvidia-caps-imex-channels" "$r/run/nvidia-persistenced" "$r/run/nvidia-fabricmanager" "$r/tmp/nvidia-mps"
  if [ "$flavour" = open ]; then
    printf 'NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  %s  Release Build  (dvs-builder@U16-I3-B03-4-3)  Tue Jul  1 22:11:46 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1) \n' "$ver" > "$r/proc/driver/nvidia/version"
  else
    printf 'NVRM version: NVIDIA UNIX x86_64 Kernel Module  %s  Mon Jun 30 21:20:11 UTC 2025\nGCC version:  gcc version 12.2.0 (Debian 12.2.0-14+deb12u1) \n' "$ver" > "$r/proc/driver/nvidia/version"
  fi
  cp "$here/params" "$r/proc/driver/nvidia/params"
  printf 'Character devices:\n  1 mem\n  4 /dev/vc/0\n  5 /dev/tty\n 10 misc\n195 nvidia-frontend\n226 drm\n508 nvidia-uvm\n509 nvidia-nvlink\n510 nvidia-caps\n511 nvidia-caps-imex-channels\n\nBlock devices:\n  8 sd\n259 blkext\n' > "$r/proc/devices"
  : > "$r/proc/driver/nvidia-caps/mig-minors"
  local g gi ci m=3
  echo "config 1" >> "$r/proc/driver/nvidia-caps/mig-minors"; echo "monitor 2" >> "$r/proc/driver/nvidia-caps/mig-minors"
  for g in 0 1; do for gi in $(seq 0 14); do
    echo "gpu$g/gi$gi/access $m" >> "$r/proc/driver/nvidia-caps/mig-minors"; m=$((m+1))
    for ci in $(seq 0 7); do echo "gpu$g/gi$gi/ci$ci/access $m" >> "$r/proc/driver/nvidia-caps/mig-minors"; m=$((m+1)); done
  done; done
  local i=0 spec bdf uuid model
  for spec in "$@"; do
    bdf=${spec%%|*}; uuid=$(echo "$spec" | cut -d'|' -f2); model=${spec##*|}
    mkdir -p "$r/proc/driver/nvidia/gpus/$bdf" "$r/sys/bus/pci/devices/$bdf/drm/card$i" "$r/sys/bus/pci/devices/$bdf/drm/renderD$((128+i))"
    printf 'Model: \t\t %s\nIRQ:   \t\t %d\nGPU UUID: \t %s\nVideo BIOS: \t 96.00.74.00.01\nBus Type: \t PCIe\nDMA Size: \t 52 bits\nDMA Mask: \t 0xfffffffffffff\nBus Location: \t %s\nDevice Minor: \t %d\nGPU Excluded:\t No\n' \
      "$model" $((120+i)) "$uuid" "$bdf" "$i" > "$r/proc/driver/nvidia/gpus/$bdf/information"
    if [ "$(id -u)" = 0 ]; then
      mknod -m 666 "$r/dev/nvidia$i" c 195 "$i"
      mknod -m 660 "$r/dev/dri/card$i" c 226 "$i"; chgrp 44 "$r/dev/dri/card$i"
      mknod -m 666 "$r/dev/dri/renderD$((128+i))" c 226 $((128+i))
    fi
    i=$((i+1))
  done
  if [ "$(id -u)" = 0 ]; then
    mknod -m 666 "$r/dev/nvidiactl" c 195 255
    mknod -m 666 "$r/dev/nvidia-modeset" c 195 254
    mknod -m 666 "$r/dev/nvidia-uvm" c 508 0
    mknod -m 666 "$r/dev/nvidia-uvm-tools" c 508 1
    mknod -m 400 "$r/dev/nvidia-caps/nvidia-cap1" c 510 1
    mknod -m 444 "$r/dev/nvidia-caps/nvidia-cap2" c 510 2
    mknod -m 666 "$r/dev/nvidia-caps-imex-channels/channel0" c 511 0
  fi
  python3 - "$r/run/nvidia-persistenced/socket" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])
PY
}

ldconf() { # root dirs...
  local r=$1; shift
  mkdir -p "$r/etc/ld.so.conf.d"
  echo 'include /etc/ld.so.conf.d/*.conf' > "$r/etc/ld.so.conf"
  printf '%s\n' "$@" > "$r/etc/ld.so.conf.d/x86_64-linux-gnu.conf"
  /sbin/ldconfig -r "$r"
}

gpus2=("0000:3b:00.0|GPU-4c2a7a2f-6f2e-31d7-7a5c-0c7b2a1e9d01|NVIDIA H100 80GB HBM3" "0000:86:00.0|GPU-8b9d3c4e-1a2b-4c5d-8e9f-a0b1c2d3e4f5|NVIDIA H100 80GB HBM3")

# --- debian-535: the packages' own layout, plus what their maintainer scripts make ------------
debian_root() { # root version debdir [i386 debdir]
  local r=$1 ver=$2 debs=$3 debs32=${4:-} f n
  for f in "$debs"/*.deb; do dpkg-deb -x "$f" "$r"; done
  if [ -n "$debs32" ]; then for f in "$debs32"/*.deb; do dpkg-deb -x "$f" "$r"; done; fi
  rm -rf "$r/usr/share/doc" "$r/usr/share/bug" "$r/usr/share/lintian" "$r/usr/share/man"
  mkdir -p "$r/etc/alternatives"
  alt() { # link name target  (what update-alternatives makes: link -> /etc/alternatives/name -> target)
    [ -e "$r$3" ] || return 0
    mkdir -p "$r$(dirname "$1")"
    ln -sfn "$3" "$r/etc/alternatives/$2"; ln -sfn "/etc/alternatives/$2" "$r$1"
  }
  for n in libGLX_nvidia.so.0 libEGL_nvidia.so.0 libGLESv1_CM_nvidia.so.1 libGLESv2_nvidia.so.2 libcuda.so.1 libcuda.so \
    libcudadebugger.so.1 libnvcuvid.so.1 libnvcuvid.so libnvidia-allocator.so.1 libnvidia-api.so.1 libnvidia-encode.so.1 \
    libnvidia-fbc.so.1 libnvidia-ml.so.1 libnvidia-ngx.so.1 libnvidia-nvvm.so.4 libnvidia-nvvm.so.$ver libnvidia-opencl.so.1 \
    libnvidia-opticalflow.so.1 libnvidia-ptxjitcompiler.so.1 libnvoptix.so.1; do
    alt "$lib/$n" "nvidia--$n-x86_64-linux-gnu" "$lib/nvidia/current/$n"
  done
  for n in libcuda.so.1 libcuda.so libnvidia-ml.so.1 libnvidia-ptxjitcompiler.so.1; do
    alt "/usr/lib/i386-linux-gnu/$n" "nvidia--$n-i386-linux-gnu" "/usr/lib/i386-linux-gnu/nvidia/current/$n"
  done
  alt "$lib/vdpau/libvdpau_nvidia.so.1" nvidia--libvdpau_nvidia.so.1-x86_64-linux-gnu "$lib/nvidia/current/libvdpau_nvidia.so.1"
  alt "$lib/gbm/nvidia-drm_gbm.so" nvidia--nvidia-drm_gbm.so-x86_64-linux-gnu "$lib/nvidia/current/nvidia-drm_gbm.so"
  alt "$lib/nvidia/libnvidia-cfg.so.1" nvidia--libnvidia-cfg.so.1-x86_64-linux-gnu "$lib/nvidia/current/libnvidia-cfg.so.1"
  alt /usr/share/nvidia/nvoptix.bin nvidia--nvoptix.bin "$lib/nvidia/current/nvoptix.bin"
  alt /usr/bin/nvidia-smi nvidia--nvidia-smi /usr/lib/nvidia/current/nvidia-smi
  alt /usr/bin/nvidia-debugdump nvidia--nvidia-debugdump /usr/lib/nvidia/current/nvidia-debugdump
  alt /usr/lib/nvidia/nvidia_drv.so nvidia--nvidia_drv.so /usr/lib/nvidia/current/nvidia_drv.so
  alt /usr/lib/nvidia/libglxserver_nvidia.so nvidia--libglxserver_nvidia.so /usr/lib/nvidia/current/libglxserver_nvidia.so
  ln -sfn /usr/lib/nvidia/current "$r/etc/alternatives/nvidia"; ln -sfn /etc/alternatives/nvidia "$r/usr/lib/nvidia/nvidia"
  ldconf "$r" /usr/local/lib/x86_64-linux-gnu /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /usr/lib/i386-linux-gnu
  host_tree "$r" "$ver" open "${gpus2[@]}"
}
lib=/usr/lib/x86_64-linux-gnu
debian_root "$out.tmp/debian-535" "$v535" "$cache/debs/$v535" "$cache/debs/$v535-i386"
# debian-535-upgrade: the same host after Debian's security update to $v535u (for refresh tests)
debian_root "$out.tmp/debian-535-upgrade" "$v535u" "$cache/debs/$v535u"

# --- flat-535: what NVIDIA's .run installer leaves on Ubuntu ----------------------------------
d=$out.tmp/debian-535; r=$out.tmp/flat-535
mkdir -p "$r$lib/vdpau" "$r/usr/bin" "$r/usr/lib/xorg/modules/drivers" "$r/usr/lib/xorg/modules/extensions" \
  "$r/lib/firmware/nvidia" "$r/usr/share" "$r/etc"
for f in "$d$lib/nvidia/current"/*.so.* "$d$lib"/libnvidia-*.so.$v535; do
  [ -L "$f" ] && continue; cp -l "$f" "$r$lib/"
done
mv "$r$lib/libvdpau_nvidia.so.$v535" "$r$lib/vdpau/"
ln -s "libvdpau_nvidia.so.$v535" "$r$lib/vdpau/libvdpau_nvidia.so.1"
cp -l "$d$lib/nvidia/current/nvidia-drm_gbm.so" "$r$lib/" 2>/dev/null || true
cp -l "$d$lib/nvidia/current/nvoptix.bin" "$r/usr/share/nvidia-nvoptix.bin" 2>/dev/null || true
for f in "$r$lib"/*.so.$v535; do
  b=$(basename "$f"); so=$(readelf -d "$f" 2>/dev/null | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
  if [ -n "$so" ] && [ "$so" != "$b" ]; then ln -sfn "$b" "$r$lib/$so"; fi
done
for n in libcuda libnvcuvid libnvidia-encode libnvidia-fbc libnvidia-ml libnvidia-opticalflow libnvidia-ngx; do
  ln -sfn "$n.so.1" "$r$lib/$n.so"
done
cp -l "$d/usr/lib/nvidia/current/nvidia-smi" "$d/usr/lib/nvidia/current/nvidia-debugdump" "$d/usr/bin/nvidia-persistenced" \
  "$d/usr/bin/nvidia-cuda-mps-control" "$d/usr/sbin/nvidia-cuda-mps-server" "$r/usr/bin/"
cp -l "$d/usr/lib/nvidia/current/nvidia_drv.so" "$r/usr/lib/xorg/modules/drivers/"
cp -l "$d/usr/lib/nvidia/current/libglxserver_nvidia.so.$v535" "$r/usr/lib/xorg/modules/extensions/"
ln -s "libglxserver_nvidia.so.$v535" "$r/usr/lib/xorg/modules/extensions/libglxserver_nvidia.so"
cp -rl "$d/lib/firmware/nvidia/$v535" "$r/lib/firmware/nvidia/"
cp -r "$d/usr/share/vulkan" "$d/usr/share/glvnd" "$r/usr/share/"
[ -d "$d/etc/OpenCL" ] && cp -r "$d/etc/OpenCL" "$r/etc/"
ldconf "$r" /usr/local/lib /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu
host_tree "$r" "$v535" proprietary "${gpus2[@]}"

# --- lib64-470: another branch, RHEL-style /usr/lib64, no ld.so.cache --------------------------
x=$out.tmp/x470; r=$out.tmp/lib64-470
for f in "$cache/debs/$v470"/*.deb; do dpkg-deb -x "$f" "$x"; done
mkdir -p "$r/usr/lib64/vdpau" "$r/usr/bin" "$r/usr/share"
# the packages' whole library folders, not only the files named after the driver version:
# libnvidia-nvvm.so.4.0.0 (and its link libnvidia-nvvm.so.4) carries no driver version
find "$x" -path '*/tesla-470/*' -name "*.so*" -type f -exec cp -l {} "$r/usr/lib64/" \;
find "$x" -path '*/tesla-470/*' -name "*.so*" -type l | while read -r l; do
  t=$(readlink "$l"); case $t in */*) ;; *) ln -sfn "$t" "$r/usr/lib64/$(basename "$l")";; esac
done
find "$x/usr/lib/x86_64-linux-gnu" -maxdepth 1 -name "*.so*" -type f -exec cp -l {} "$r/usr/lib64/" \;
for f in "$r/usr/lib64"/*.so.$v470; do
  b=$(basename "$f"); so=$(readelf -d "$f" 2>/dev/null | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
  if [ -n "$so" ] && [ "$so" != "$b" ]; then ln -sfn "$b" "$r/usr/lib64/$so"; fi
done
ln -sfn libcuda.so.1 "$r/usr/lib64/libcuda.so"
find "$x" -name nvidia-smi -type f -exec cp -l {} "$r/usr/bin/nvidia-smi" \;
[ -d "$x/usr/share/vulkan" ] && cp -r "$x/usr/share/vulkan" "$r/usr/share/" || true
rm -rf "$x"
host_tree "$r" "$v470" proprietary "0000:00:1e.0|GPU-1f3e5d7c-9b2a-4c6e-8d0f-123456789abc|Tesla T4"

echo "$stamp_want" > "$out.tmp/.stamp"
rm -rf "$out"; mv "$out.tmp" "$out"
echo "driver roots built in $out: $(ls "$out" | tr '\n' ' ')"
