#!/usr/bin/env bash
# Stage a CUDA build of Caffe for a GPU machine that has no apt and no
# network (nvcc, cmake, gcc and a Python with numpy 2 and CuPy there).
#
# UNTESTED ON A GPU: written without a GPU machine at hand. `fetch` was run
# on a Debian 12 machine (49 MB staged). `build` was run there only up to
# CMake's configuration (CAFFEDSD_CONFIGURE_ONLY=1, CAFFEDSD_CUDA_ARCH=90,
# Python 3.11, CUDA 13.0 nvcc completed with cu13 wheels): every dependency
# was found in the staged root. Compiling, Boost.Python for 3.12 and
# running have not been tried. Expect to fix things.
#
#   tools/gpu_stage.sh fetch STAGE          here: Debian 12, apt and network
#   tools/gpu_stage.sh build STAGE PYTHON   there: no apt, no network
#
# STAGE=gpu-stage (git-ignored, under 64 MB) can travel with a checkout.
#
# fetch: `apt-get download` of Debian 12's build dependencies (Boost with
#   Boost.Python, glog, gflags, protobuf 3.21 + protoc, HDF5, OpenBLAS,
#   lmdb; runtime and -dev packages, not their whole dependency closure:
#   libc, libstdc++, zlib and libcurl are assumed there), the Caffe source
#   unpacked by dpkg-source with its sha256 checked (tools/build_caffe.sh's
#   own fetch), and Boost.Python's C++ sources from Debian's boost1.74.
# build: `dpkg -x` of every .deb into STAGE/root; then, if PYTHON is not
#   the 3.11 that Debian 12's Boost.Python was built for, Boost.Python is
#   compiled from the staged sources for PYTHON (its headers must be there:
#   checked first); then tools/build_caffe.sh --cuda with the staged source
#   and CMake pointed into STAGE/root; then `caffedsd info`.
#
# The open question: Debian 12's libboost_python311 is built for Python
# 3.11, the GPU machine's Python is 3.12. Loading a 3.11 Boost.Python into
# 3.12 is not an option (different C API/ABI), so `build` compiles
# libboost_python312 from Boost 1.74's own sources against that Python's
# headers. Whether Boost 1.74's Boost.Python compiles against 3.12 is not
# known; if it does not, a newer Boost.Python source (1.83+) is the next try.
#
# After `build` (from the repo root there; S=STAGE, P=PYTHON):
#   export LD_LIBRARY_PATH=$S/root/usr/lib/x86_64-linux-gnu:$S/root/usr/lib/x86_64-linux-gnu/openblas-pthread
#   export PYTHONPATH=$S/caffe/pycaffe GLOG_minloglevel=2
#   $P -m pytest -m gpu -rs tests            # the gpu-marked tests, run instead of skipped
#   $P tools/bench_masked_step.py --gpu 0 --repeats 9 --json gpu.json
#   $P -m pip install --no-deps --no-build-isolation -e .  &&  ln -sf $S/caffe/bin/caffe "$(dirname $P)/caffe"
#   PATH="$(dirname $P):$PATH" CAFFEDSD_DEMO_GPU=0 VENV="$(dirname "$(dirname $P)")" bash tools/demo.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMD=${1:-}
STAGE=${2:?usage: gpu_stage.sh fetch STAGE | build STAGE PYTHON}
STAGE=$(realpath -m "$STAGE")
say() { echo "gpu-stage: $*"; }

DEBS=(libboost1.74-dev
      libboost-system1.74-dev libboost-system1.74.0 libboost-thread1.74-dev libboost-thread1.74.0
      libboost-filesystem1.74-dev libboost-filesystem1.74.0 libboost-atomic1.74-dev libboost-atomic1.74.0
      libboost-chrono1.74-dev libboost-chrono1.74.0 libboost-date-time1.74-dev libboost-date-time1.74.0
      libboost-python1.74-dev libboost-python1.74.0
      libgoogle-glog-dev libgoogle-glog0v6 libunwind8 libgflags-dev libgflags2.2
      libprotobuf-dev libprotobuf32 libprotobuf-lite32 libprotoc32 protobuf-compiler
      libhdf5-dev libhdf5-103-1 libhdf5-hl-100 libhdf5-cpp-103-1 libhdf5-hl-cpp-100 libsz2 libaec0
      libopenblas-dev libopenblas-pthread-dev libopenblas0 libopenblas0-pthread libgfortran5
      liblmdb-dev liblmdb0)

fetch() {
    mkdir -p "$STAGE/debs" "$STAGE/src"
    (cd "$STAGE/debs" && apt-get download "${DEBS[@]}" 2>&1 | grep -v "unsandboxed")
    # The Caffe source, as tools/build_caffe.sh fetches and checks it; its
    # build folder is kept (CAFFEDSD_KEEP_BUILD) and only the tree is staged.
    local probe="$STAGE/src/probe"
    CAFFEDSD_KEEP_BUILD=1 bash "$ROOT/tools/build_caffe.sh" "$(command -v python3)" "$probe" --fetch-only
    mv "$probe.build/src/caffe" "$STAGE/src/caffe"
    rm -rf "$probe.build" "$probe"
    # Boost.Python's sources (libs/python/src) out of Debian's boost1.74.
    local tmp
    tmp=$(mktemp -d)
    # shellcheck source=debian_source.sh
    . "$ROOT/tools/debian_source.sh"
    fetch_debian_source "$tmp/apt" bookworm boost1.74 "$tmp"
    (cd "$tmp" && dpkg-source --no-check -x boost1.74_*.dsc boost-src >/dev/null)  # Debian's patches applied
    mv "$tmp/boost-src/libs/python/src" "$STAGE/src/boost-python"
    rm -rf "$tmp"
    say "staged in $STAGE ($(du -sh "$STAGE" | cut -f1)); copy it to the GPU machine and run: $0 build STAGE PYTHON"
}

build() {
    local python=${3:?usage: gpu_stage.sh build STAGE PYTHON}
    python=$(command -v "$python" || echo "$python")
    local root="$STAGE/root" lib="$STAGE/root/usr/lib/x86_64-linux-gnu"
    mkdir -p "$root"
    for deb in "$STAGE"/debs/*.deb; do dpkg -x "$deb" "$root"; done
    export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PATH="$root/usr/bin:$PATH"
    local pyver pyinc pylib
    pyver=$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
    pyinc=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    pylib=$("$python" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")))')
    [ -f "$pyinc/Python.h" ] || { echo "gpu-stage: $python has no Python.h in $pyinc: pycaffe cannot be built for it" >&2; exit 1; }
    [ -f "$pylib" ] || { echo "gpu-stage: $python has no shared libpython ($pylib)" >&2; exit 1; }
    # A toolkit without cuBLAS/cuRAND (nvcc and the runtime only) is completed
    # from the NVIDIA wheels in PYTHON's environment (CuPy's and torch's).
    # shellcheck source=cuda_toolkit.sh
    . "$ROOT/tools/cuda_toolkit.sh"
    local cuda site
    cuda=$(cuda_root)
    if [ ! -e "$cuda/lib64/libcublas.so" ] || [ ! -e "$cuda/lib64/libcurand.so" ]; then
        site=$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
        say "$cuda lacks cuBLAS or cuRAND: merging it with the NVIDIA wheels in $site"
        rm -rf "$STAGE/cuda"
        cuda_merge_toolkit "$STAGE/cuda" "$cuda" "$site"/nvidia/*/
        export CUDA_HOME="$STAGE/cuda"
    fi
    if [ "$pyver" != 311 ]; then
        say "compiling Boost.Python for Python ${pyver:0:1}.${pyver:1} (Debian's is for 3.11)"
        find "$STAGE/src/boost-python" -name '*.cpp' -not -path '*numpy*' -print0 \
            | xargs -0 g++ -shared -fPIC -O2 -DBOOST_PYTHON_SOURCE -DBOOST_PYTHON_DYN_LINK \
                  -I "$root/usr/include" -I "$pyinc" -o "$lib/libboost_python$pyver.so.1.74.0" "$pylib"
        ln -sfn "libboost_python$pyver.so.1.74.0" "$lib/libboost_python$pyver.so"
        ln -sfn "libboost_python$pyver.so.1.74.0" "$lib/libboost_python3.so"
    fi
    CAFFEDSD_CAFFE_SOURCE="$STAGE/src/caffe" CAFFEDSD_CMAKE_ARGS="\
-DBOOST_ROOT=$root/usr -DBOOST_INCLUDEDIR=$root/usr/include -DBOOST_LIBRARYDIR=$lib -DBoost_NO_SYSTEM_PATHS=ON \
-DGLOG_INCLUDE_DIR=$root/usr/include -DGLOG_LIBRARY=$lib/libglog.so \
-DGFLAGS_INCLUDE_DIR=$root/usr/include -DGFLAGS_LIBRARY=$lib/libgflags.so \
-DProtobuf_INCLUDE_DIR=$root/usr/include -DProtobuf_LIBRARY=$lib/libprotobuf.so \
-DProtobuf_PROTOC_EXECUTABLE=$root/usr/bin/protoc \
-DCMAKE_POLICY_DEFAULT_CMP0074=NEW -DHDF5_ROOT=$lib/hdf5/serial -DHDF5_NO_FIND_PACKAGE_CONFIG_FILE=ON \
-DOpenBLAS_INCLUDE_DIR=$root/usr/include/x86_64-linux-gnu/openblas-pthread \
-DOpenBLAS_LIB=$lib/openblas-pthread/libopenblas.so \
-DLMDB_INCLUDE_DIR=$root/usr/include -DLMDB_LIBRARIES=$lib/liblmdb.so \
-DPYTHON_INCLUDE_DIR=$pyinc -DPYTHON_LIBRARY=$pylib" \
        bash "$ROOT/tools/build_caffe.sh" "$python" "$STAGE/caffe" --cuda
    PYTHONPATH="$STAGE/caffe/pycaffe:$ROOT" "$python" -c "from caffedsd.cli import main; main(['info'])"
}

case "$CMD" in
    fetch) fetch ;;
    build) build "$@" ;;
    *) echo "usage: gpu_stage.sh fetch STAGE | build STAGE PYTHON" >&2; exit 2 ;;
esac
