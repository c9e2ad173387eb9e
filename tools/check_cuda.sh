#!/usr/bin/env bash
# `make check-cuda`: prove that the CUDA build of Caffe compiles with current
# toolkits, on a machine without a GPU.
#
#   tools/check_cuda.sh [VERSION ...]      (default: 13 12.4 11.8)
#   tools/check_cuda.sh local              the toolkit already here (CUDA_HOME or nvcc on PATH)
#
# For each version, into one throwaway folder: a venv with pip's CMake
# (CMake 4: the policy path of build_caffe.sh is what is checked) and numpy;
# a CUDA toolkit root; then tools/build_caffe.sh --cuda, the code path
# `make setup CUDA=1` takes, for one arch (CAFFEDSD_CUDA_ARCH, default 90)
# into a throwaway prefix. The toolkits:
#   13     PyPI's NVIDIA wheels (nvcc, runtime, cuBLAS, cuRAND, CCCL), merged
#          into one tree of links;
#   12.4   Debian 13's non-free nvidia-cuda-toolkit and nvidia-cuda-dev;
#   11.8   Debian 12's non-free nvidia-cuda-toolkit and nvidia-cuda-dev, with
#          Debian 12's g++-11 (nvcc 11.8 refuses g++ 12: build_caffe.sh picks
#          g++-11 as the host compiler, as it does for users);
# the Debian packages are fetched with a private apt configuration and
# unpacked with dpkg -x, so nothing is installed on the machine.
# PyPI's -cu12 and -cu11 nvcc wheels (12.0 to 12.9 and 11.8 looked at) ship
# ptxas but no nvcc driver, which is why 12.x and 11.x come from Debian.
# Without a GPU driver a CUDA build runs nothing on a GPU (and aborts at
# its first prefetching data layer), so the check is that it builds and
# that its pycaffe carries Blob._gpu_data_ptr / _gpu_diff_ptr.
#
# Prints one line per version (result, wall time); the folder is deleted
# afterwards unless CAFFEDSD_CHECK_KEEP=1. Needs the Debian build packages
# that `make setup` installs, network for pip and apt, several GB of disk
# per Debian toolkit (11.8: 1.2 GB of packages, 3.8 GB unpacked, static
# libraries included), and many minutes on 2 cores.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=cuda_toolkit.sh
. "$ROOT/tools/cuda_toolkit.sh"
# shellcheck source=debian_source.sh
. "$ROOT/tools/debian_source.sh"
PYTHON=${PYTHON:-python3}
ARCH=${CAFFEDSD_CUDA_ARCH:-90}
USER_CUDA_HOME=${CUDA_HOME:-}
MAJORS=("$@")
[ ${#MAJORS[@]} -eq 0 ] && MAJORS=(13 12.4 11.8)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/caffedsd-check-cuda.XXXXXX")
cleanup() { [ "${CAFFEDSD_CHECK_KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap cleanup EXIT

say() { echo "check-cuda: $*"; }

# What pip installs beside CMake, and which Debian release and packages
# give the toolkit.
wheels_for() {
    case "$1" in
        13) echo "nvidia-cuda-nvcc==13.* nvidia-cuda-runtime==13.* nvidia-cublas==13.* nvidia-curand nvidia-cuda-cccl==13.*" ;;
        12.4|11.8|local) echo "" ;;
        *) return 1 ;;
    esac
}
debian_toolkit_for() {  # the Debian release, then the packages to unpack
    local common="nvidia-cuda-toolkit nvidia-cuda-dev libcurand10 libnvvm4 libcu++-dev libcub-dev libthrust-dev"
    case "$1" in
        12.4) echo "trixie $common libcudart12 libcublas12 libcublaslt12" ;;
        11.8) echo "bookworm $common libcudart11.0 libcublas11 libcublaslt11 g++-11 gcc-11 cpp-11 libstdc++-11-dev libgcc-11-dev gcc-11-base" ;;
        *) return 1 ;;
    esac
}

# Points CUDA_HOME at VERSION's toolkit, made inside DIR (and, for a Debian
# toolkit, puts its unpacked /usr/bin last on PATH, for 11.8's g++-11).
make_toolkit() {  # make_toolkit VERSION DIR
    local version=$1 dir=$2 spec deb
    case "$version" in
        local) return 0 ;;
        13) cuda_merge_toolkit "$dir/toolkit" \
                "$("$dir/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"/nvidia/*/ \
                || return 1 ;;
        *) spec=$(debian_toolkit_for "$version") || return 1
           # shellcheck disable=SC2086 # the package names hold no spaces
           fetch_debian_debs "$dir/apt" "${spec%% *}" "main non-free" "$dir/debs" ${spec#* } || return 1
           for deb in "$dir"/debs/*.deb; do dpkg -x "$deb" "$dir/root" || return 1; done
           rm -rf "$dir/debs"
           cuda_debian_toolkit "$dir/toolkit" "$dir/root" || return 1
           PATH="$PATH:$dir/root/usr/bin" ;;
    esac
    export CUDA_HOME="$dir/toolkit"
}

status=0
BASE_PATH=$PATH
for major in "${MAJORS[@]}"; do
    wheels=$(wheels_for "$major") || { say "CUDA $major: unknown version (known: 13, 12.4, 11.8, local)"; status=2; continue; }
    if [ -n "$USER_CUDA_HOME" ]; then export CUDA_HOME="$USER_CUDA_HOME"; else unset CUDA_HOME; fi
    PATH=$BASE_PATH
    dir="$WORK/cuda$major"
    log="$dir/check.log"
    mkdir -p "$dir"
    start=$(date +%s)
    result="FAILED"
    {
        "$PYTHON" -m venv "$dir/venv" \
        && "$dir/venv/bin/pip" install -q "cmake>=4" numpy $wheels \
        && echo "cmake: $("$dir/venv/bin/cmake" --version | head -1)" \
        && make_toolkit "$major" "$dir" \
        && echo "nvcc: $("$(cuda_nvcc)" --version | tail -1)" \
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
