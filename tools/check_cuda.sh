#!/usr/bin/env bash
# `make check-cuda`: prove that the CUDA build of Caffe compiles with current
# toolkits, on a machine without a GPU.
#
#   tools/check_cuda.sh [MAJOR ...]        (default: 13 12)
#   tools/check_cuda.sh local              the toolkit already here (CUDA_HOME or nvcc on PATH)
#
# For each CUDA major version, into one throwaway folder: a venv with pip's
# CMake (CMake 4: the policy path of build_caffe.sh is what is checked),
# numpy, and PyPI's NVIDIA wheels (nvcc, runtime, cuBLAS, cuRAND, CCCL; the
# -cu12 names for 12.x); a toolkit-root folder made of links into those
# wheels; then tools/build_caffe.sh --cuda, the code path `make setup CUDA=1`
# takes, for one arch (CAFFEDSD_CUDA_ARCH, default 90) into a throwaway
# prefix. A CUDA build cannot run without a GPU driver, so the check is that
# it builds and that its pycaffe carries Blob._gpu_data_ptr / _gpu_diff_ptr.
#
# PyPI's CUDA 12 nvcc wheels (nvidia-cuda-nvcc-cu12, 12.4 and 12.9 at
# least) ship ptxas but no nvcc driver, so "12" stops there with that
# reason; check a CUDA 12 toolkit with `local` instead.
#
# Prints one line per version (result, wall time); the folder is deleted
# afterwards unless CAFFEDSD_CHECK_KEEP=1. Needs the Debian build packages
# that `make setup` installs, network for pip, about 3 GB of disk, and many
# minutes on 2 cores.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=cuda_toolkit.sh
. "$ROOT/tools/cuda_toolkit.sh"
PYTHON=${PYTHON:-python3}
ARCH=${CAFFEDSD_CUDA_ARCH:-90}
USER_CUDA_HOME=${CUDA_HOME:-}
MAJORS=("$@")
[ ${#MAJORS[@]} -eq 0 ] && MAJORS=(13 12)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/caffedsd-check-cuda.XXXXXX")
cleanup() { [ "${CAFFEDSD_CHECK_KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

say() { echo "check-cuda: $*"; }

wheels_for() {
    case "$1" in
        13) echo "nvidia-cuda-nvcc==13.* nvidia-cuda-runtime==13.* nvidia-cublas==13.* nvidia-curand nvidia-cuda-cccl==13.*" ;;
        12) echo "nvidia-cuda-nvcc-cu12 nvidia-cuda-runtime-cu12 nvidia-cublas-cu12 nvidia-curand-cu12 nvidia-cuda-cccl-cu12" ;;
        local) echo "" ;;
        *) return 1 ;;
    esac
}

status=0
for major in "${MAJORS[@]}"; do
    wheels=$(wheels_for "$major") || { say "CUDA $major: unknown major version (known: 12, 13, local)"; status=2; continue; }
    if [ -n "$USER_CUDA_HOME" ]; then export CUDA_HOME="$USER_CUDA_HOME"; else unset CUDA_HOME; fi
    dir="$WORK/cuda$major"
    log="$dir/check.log"
    mkdir -p "$dir"
    start=$(date +%s)
    result="FAILED"
    {
        "$PYTHON" -m venv "$dir/venv" \
        && "$dir/venv/bin/pip" install -q "cmake>=4" numpy $wheels \
        && echo "cmake: $("$dir/venv/bin/cmake" --version | head -1)" \
        && if [ "$major" = local ]; then :; else
               cuda_merge_toolkit "$dir/toolkit" \
                   "$("$dir/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/nvidia/*/ \
                   && export CUDA_HOME="$dir/toolkit"
           fi \
        && PATH="$dir/venv/bin:$PATH" CAFFEDSD_CUDA_ARCH="$ARCH" \
           bash "$ROOT/tools/build_caffe.sh" "$dir/venv/bin/python" "$dir/prefix" --cuda
    } > "$log" 2>&1
    built=$?
    if [ $built -eq 0 ]; then
        so=$(find "$dir/prefix/pycaffe/" -name '_caffe*.so' | head -1)
        if [ -n "$so" ] && grep -q _gpu_data_ptr "$so" && grep -q _gpu_diff_ptr "$so" \
           && ldd "$dir/prefix/lib/libcaffe.so" 2>/dev/null | grep -q libcudart; then
            result="OK ($(cat "$dir/prefix/.complete"); pycaffe has Blob._gpu_data_ptr and _gpu_diff_ptr;"
            result="$result libcaffe.so $(du -shL "$dir/prefix/lib/libcaffe.so" | cut -f1))"
        else
            result="FAILED: built, but the pycaffe or libcaffe is not a CUDA build"
        fi
    fi
    wall=$(( $(date +%s) - start ))
    [ "${result%% *}" = OK ] || { status=1; tail -25 "$log" | sed 's/^/    /'; }
    say "CUDA $major (sm_$ARCH, $(grep -m1 '^cmake:' "$log" | cut -d' ' -f2-)): $result, $((wall / 60)) min $((wall % 60)) s wall"
    [ "${CAFFEDSD_CHECK_KEEP:-0}" = 1 ] || rm -rf "$dir"
done
exit $status
