#!/usr/bin/env bash
# `make setup`: a venv with caffedsd, pycaffe importable in it and a `caffe`
# binary beside its python. Each step checks whether it is already done.
#
# Caffe is taken, in this order, from:
#   1. a pycaffe the venv's python already imports;
#   2. CAFFE_ROOT, a built Caffe tree (python/caffe, build/tools/caffe);
#   3. a build of Debian's stock Caffe source into CAFFEDSD_CACHE
#      (default ~/.cache/caffedsd), made once and reused.
# `--cuda` (or CAFFEDSD_CUDA=1) builds with CUDA (CPU_ONLY=OFF) instead, for
# the toolkit and GPU arch tools/cuda_toolkit.sh finds, into a prefix named
# after both, and installs the CuPy wheel of that CUDA major (device hooks).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
# Relative to the checkout, and absolute: the Caffe build runs elsewhere.
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac
PYTHON=${PYTHON:-python3}
CACHE=${CAFFEDSD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/caffedsd}
CUDA=${CAFFEDSD_CUDA:-0}
for arg in "$@"; do
    case "$arg" in
        --cuda) CUDA=1 ;;
        *) echo "setup: unknown option $arg (known: --cuda)" >&2; exit 2 ;;
    esac
done

say() { echo "setup: $*"; }

RUNTIME_DEBS=(dataset-fashion-mnist)
BUILD_DEBS=(cmake g++ make dpkg-dev debian-archive-keyring
            libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev
            libhdf5-dev liblmdb-dev libopenblas-dev
            libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev)

apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=()
    [ "$(id -u)" -ne 0 ] && sudo=(sudo)
    say "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install "${RUNTIME_DEBS[@]}"

# --- the venv and caffedsd --------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.caffedsd-install"
want=$(cat "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    say "installing caffedsd and its dependencies into $VENV"
    "$VPY" -m pip install -q --upgrade pip >/dev/null
    "$VPY" -m pip install -q -e "$ROOT[pycaffe,test]"
    echo "$want" > "$stamp"
fi

# --- Caffe ------------------------------------------------------------------
SITE=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
PTH="$SITE/caffedsd-pycaffe.pth"

link_caffe() {  # link_caffe PYCAFFE_PARENT CAFFE_BINARY
    [ "$(cat "$PTH" 2>/dev/null)" = "$1" ] || echo "$1" > "$PTH"
    [ "$(readlink "$VENV/bin/caffe" 2>/dev/null)" = "$2" ] || ln -sfn "$2" "$VENV/bin/caffe"
}

pycaffe_ok() { "$VPY" -c 'import caffe' >/dev/null 2>&1; }

if [ ! -f "$PTH" ] && pycaffe_ok; then
    say "using the pycaffe this python already imports"
    if [ ! -e "$VENV/bin/caffe" ]; then
        bin=$(command -v caffe || true)
        [ -n "${CAFFE_ROOT:-}" ] && [ -x "$CAFFE_ROOT/build/tools/caffe" ] && bin="$CAFFE_ROOT/build/tools/caffe"
        if [ -n "$bin" ]; then ln -sfn "$bin" "$VENV/bin/caffe"
        else say "warning: no caffe binary found; put it on PATH or set CAFFEDSD_CAFFE_BIN"; fi
    fi
elif [ -n "${CAFFE_ROOT:-}" ]; then
    bin="$CAFFE_ROOT/build/tools/caffe"
    [ -x "$bin" ] || bin="$CAFFE_ROOT/bin/caffe"
    [ -d "$CAFFE_ROOT/python/caffe" ] && [ -x "$bin" ] \
        || { echo "setup: CAFFE_ROOT=$CAFFE_ROOT has no python/caffe and build/tools/caffe: build Caffe with pycaffe there first" >&2; exit 1; }
    say "using CAFFE_ROOT=$CAFFE_ROOT"
    link_caffe "$CAFFE_ROOT/python" "$bin"
else
    flavor=cpu
    if [ "$CUDA" = 1 ]; then
        . "$ROOT/tools/cuda_toolkit.sh"
        cuda_version=$(cuda_version) && cuda_arch=$(cuda_arch) || exit 1
        flavor="cuda$cuda_version-sm$cuda_arch"
        cupy="cupy-cuda${cuda_version%%.*}x"
        if ! "$VPY" -c 'import cupy' >/dev/null 2>&1; then
            say "installing $cupy (device hooks)"
            "$VPY" -m pip install -q "$cupy" || say "warning: could not install $cupy; hooks will copy through the host"
        fi
    fi
    pytag=$("$VPY" -c 'import sys, numpy; print("py%d%d-np%s" % (sys.version_info[0], sys.version_info[1], numpy.__version__.split(".")[0]))')
    prefix="$CACHE/caffe-1.0.0+git20180821.99bd997-8-$flavor-$pytag"
    if [ ! -f "$prefix/.complete" ]; then
        apt_install "${BUILD_DEBS[@]}"
        args=("$VPY" "$prefix")
        [ "$CUDA" = 1 ] && args+=(--cuda)
        bash "$ROOT/tools/build_caffe.sh" "${args[@]}"
    fi
    link_caffe "$prefix/pycaffe" "$prefix/bin/caffe"
fi

# The solvers in solvers/ snapshot into work/ (their snapshot_prefix), where
# the train-* examples of --help and the README run them from the checkout.
mkdir -p "$ROOT/work"

pycaffe_ok || { echo "setup: 'import caffe' fails in $VPY:" >&2; "$VPY" -c 'import caffe' 2>&1 | tail -3 >&2; exit 1; }
say "ready: $("$VENV/bin/caffedsd" info | tr '\n' ' ')"
