#!/usr/bin/env bash
# Rehearse tools/gpu_stage.sh on a newer distribution than the Debian 12 its
# stage comes from, as the GPU machine's likely is (its Python 3.12.3 is the
# version Ubuntu 24.04 ships): a Debian 13 chroot (g++ 14, CMake 3.31, glibc 2.41), with a
# Python 3.12 venv whose base Python is not in the loader's cache, as a
# venv's may not be. Needs root, debootstrap and Debian's and PyPI's
# registries; no GPU (the steps run with --cpu).
#
#   tools/rehearse_stage.sh CHROOT PYTHON3.12 [STEP]
#
# CHROOT is made by debootstrap if it is not there (1.5 min). PYTHON3.12 is
# a Python 3.12 of this machine: its prefix is bound into the chroot at the
# same path. STEP is gpu_stage.sh's `all` (the default) or `build`. This
# checkout (its committed files) and its fetched gpu-stage (run
# `tools/gpu_stage.sh fetch gpu-stage` first) are copied into CHROOT/rehearse.
# `all` leaves its three files in CHROOT/rehearse-out. Take things away in
# the chroot to see what gpu_stage.sh says (e.g. mv CHROOT/usr/bin/make
# CHROOT/usr/bin/make.away: the build goes through Ninja).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
say() { echo "rehearse: $*"; }
[ $# -ge 2 ] || { say "usage: rehearse_stage.sh CHROOT PYTHON3.12 [all|build]" >&2; exit 2; }
CHROOT=$(realpath -m "$1")
PYTHON=$2
STEP=${3:-all}
case "$STEP" in all|build) ;; *) say "unknown step $STEP (all or build)" >&2; exit 2 ;; esac
[ -f "$ROOT/gpu-stage/root.tar.xz" ] || { say "no gpu-stage/root.tar.xz: run tools/gpu_stage.sh fetch gpu-stage" >&2; exit 2; }
prefix=$("$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 12); print(sys.base_prefix)') \
    || { say "$PYTHON is not a Python 3.12" >&2; exit 2; }

if [ ! -x "$CHROOT/usr/bin/g++" ]; then
    say "debootstrap Debian 13 into $CHROOT"
    debootstrap --variant=minbase --include=g++,make,cmake,ninja-build,xz-utils,ca-certificates,python3 \
        trixie "$CHROOT" > "$CHROOT.debootstrap.log" 2>&1 \
        || { tail -5 "$CHROOT.debootstrap.log" >&2; exit 1; }
fi
# What pip and apt there need of this machine's network settings.
cp /etc/resolv.conf "$CHROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$CHROOT/etc/ssl/certs/ca-certificates.crt"

mounts=()
bind() {  # bind SOURCE TARGET-in-chroot, undone on exit
    mkdir -p "$CHROOT$2"
    mountpoint -q "$CHROOT$2" || { mount --bind "$1" "$CHROOT$2"; mounts+=("$CHROOT$2"); }
}
unbind() { local m; for m in "${mounts[@]}"; do umount "$m" || true; done; }
trap unbind EXIT
bind /proc /proc
bind /dev /dev
bind "$prefix" "$prefix"

venv=/opt/rehearse-py312
if [ ! -x "$CHROOT$venv/bin/python" ]; then
    say "a Python 3.12 venv in the chroot ($venv) with what caffedsd and pycaffe import"
    chroot "$CHROOT" "$prefix/bin/python3.12" -m venv "$venv"
    chroot "$CHROOT" env PIP_CERT=/etc/ssl/certs/ca-certificates.crt "$venv/bin/pip" install -q \
        numpy protobuf h5py click pyyaml matplotlib scipy scikit-image pytest
fi

say "this checkout's committed files and its gpu-stage into $CHROOT/rehearse"
rm -rf "$CHROOT/rehearse" "$CHROOT/rehearse-out"
git clone -q "$ROOT" "$CHROOT/rehearse"
mkdir -p "$CHROOT/rehearse/gpu-stage"
cp -a "$ROOT"/gpu-stage/{root.tar.xz,src,fashion-mnist,wheels} "$CHROOT/rehearse/gpu-stage/"

say "gpu_stage.sh $STEP --cpu in the chroot: $(chroot "$CHROOT" g++ --version | head -1)"
run=(tools/gpu_stage.sh "$STEP" gpu-stage "$venv/bin/python")
[ "$STEP" = build ] || run+=(/rehearse-out)
chroot "$CHROOT" env -i PATH="$venv/bin:/usr/bin:/bin" HOME=/root LANG=C.UTF-8 \
    sh -c 'cd /rehearse && exec "$@" --cpu' sh "${run[@]}"
