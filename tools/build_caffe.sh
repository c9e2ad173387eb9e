#!/usr/bin/env bash
# Build stock BVLC Caffe from Debian's source package into a cache prefix.
#
#   tools/build_caffe.sh PYTHON PREFIX [--cuda]
#
# PYTHON is the interpreter pycaffe is built for (the venv's), PREFIX the
# install prefix (bin/caffe, lib/, python/caffe). The prefix is only marked
# complete (PREFIX/.complete) after a whole, successful build, so an
# interrupted build is redone from scratch on the next run.
#
# --cuda builds with CUDA (no cuDNN, no NCCL) for one GPU architecture, with
# the toolkit and arch that tools/cuda_toolkit.sh finds (CUDA_HOME or nvcc on
# PATH; CAFFEDSD_CUDA_ARCH or nvidia-smi). CMake 3.27+ and CMake 4 need the
# policy settings below; CUDA 13 needs the cudaDeviceProp patch.
#
# Offline (tools/gpu_stage.sh): CAFFEDSD_CAFFE_SOURCE names the source tree
# already unpacked by dpkg-source (Debian's patches applied) from the
# checked tarball, so neither apt nor dpkg-source is needed;
# CAFFEDSD_CMAKE_ARGS adds CMake options (where the dependencies are);
# CAFFEDSD_CONFIGURE_ONLY=1 stops after CMake's configuration.
set -euo pipefail

PYTHON=${1:?usage: build_caffe.sh PYTHON PREFIX [--cuda]}
PREFIX=${2:?usage: build_caffe.sh PYTHON PREFIX [--cuda]}
CUDA=0
FETCH_ONLY=0
[ "${3:-}" = "--cuda" ] && CUDA=1
# --fetch-only: stop once PREFIX.build/src/caffe is unpacked (gpu_stage.sh).
[ "${3:-}" = "--fetch-only" ] && FETCH_ONLY=1
# Absolute, but not resolved: a venv's python is a symlink that must stay one.
PYTHON=$(realpath -s "$PYTHON")
PREFIX=$(realpath -m "$PREFIX")

VERSION=1.0.0+git20180821.99bd997-8
ORIG=caffe_1.0.0+git20180821.99bd997.orig.tar.gz
ORIG_SHA256=e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c
JOBS=${CAFFEDSD_BUILD_JOBS:-$(nproc)}
HERE=$(cd "$(dirname "$0")" && pwd)

# shellcheck source=cxx_compiler.sh
. "$HERE/cxx_compiler.sh"
pick_cxx CXX

if [ "$CUDA" = 1 ]; then
    # shellcheck source=cuda_toolkit.sh
    . "$HERE/cuda_toolkit.sh"
    CUDA_ROOT=$(cuda_root)
    CUDA_VERSION=$(cuda_version)
    CUDA_ARCH=$(cuda_arch)
    CUDA_HOST_CXX=$(cuda_host_compiler "$CUDA_VERSION")
fi

if [ -f "$PREFIX/.complete" ]; then
    echo "caffe: already built in $PREFIX"
    exit 0
fi

say() { echo "caffe: $*"; }

# The source comes from Debian 11 "bullseye".
# shellcheck source=debian_source.sh
. "$HERE/debian_source.sh"

WORK="$PREFIX.build"
rm -rf "$WORK" "$PREFIX"
mkdir -p "$WORK/src"

if [ -n "${CAFFEDSD_CAFFE_SOURCE:-}" ]; then
    say "source tree from $CAFFEDSD_CAFFE_SOURCE"
    cp -r "$CAFFEDSD_CAFFE_SOURCE" "$WORK/src/caffe"
else
    say "fetching source package caffe=$VERSION"
    fetch_debian_source "$WORK/apt" bullseye "caffe=$VERSION" "$WORK/src"

    echo "$ORIG_SHA256  $WORK/src/$ORIG" | sha256sum -c --quiet - \
        || { echo "caffe: sha256 of $ORIG does not match $ORIG_SHA256" >&2; exit 1; }
    say "sha256 of $ORIG verified"
    (cd "$WORK/src" && dpkg-source --no-check -x "caffe_${VERSION}.dsc" caffe >/dev/null)
fi
SRC="$WORK/src/caffe"
if [ "$FETCH_ONLY" = 1 ]; then
    say "source unpacked in $SRC"
    exit 0
fi

# protobuf 3.21 (Debian 12) dropped the two-argument SetTotalBytesLimit.
sed -i 's/SetTotalBytesLimit(kProtoReadBytesLimit, *[0-9]*)/SetTotalBytesLimit(kProtoReadBytesLimit)/' \
    "$SRC/src/caffe/util/io.cpp"
grep -q 'SetTotalBytesLimit(kProtoReadBytesLimit)' "$SRC/src/caffe/util/io.cpp" \
    || { echo "caffe: could not patch SetTotalBytesLimit in io.cpp" >&2; exit 1; }

CPU_ONLY=ON
# CMake 4 refuses cmake_minimum_required(2.8.7) without a policy minimum;
# FindCUDA (CMP0146), FindPythonInterp/Libs (CMP0148) and FindBoost (CMP0167)
# are kept under their OLD policies. Older CMake ignores these variables.
CMAKE_COMPAT=(-DCMAKE_POLICY_VERSION_MINIMUM=3.5 -DCMAKE_POLICY_DEFAULT_CMP0146=OLD
              -DCMAKE_POLICY_DEFAULT_CMP0148=OLD -DCMAKE_POLICY_DEFAULT_CMP0167=OLD)
CUDA_OPTS=()
STAMP_EXTRA=""
if [ "$CUDA" = 1 ]; then
    CPU_ONLY=OFF
    # CUDA 13 removed cudaDeviceProp::clockRate, deviceOverlap and
    # kernelExecTimeoutEnabled; the same facts come from device attributes,
    # which every CUDA since 5 has.
    attr() { echo "[\&]{ int v = 0; cudaDeviceGetAttribute(\&v, $1, device); return v; }()"; }
    sed -i -e "s/prop\.clockRate/$(attr cudaDevAttrClockRate)/" \
           -e "s/prop\.deviceOverlap/$(attr cudaDevAttrGpuOverlap)/" \
           -e "s/prop\.kernelExecTimeoutEnabled/$(attr cudaDevAttrKernelExecTimeout)/" \
        "$SRC/src/caffe/common.cpp"
    sed -i -e 's/CAFFE_TEST_CUDA_PROP\.clockRate/0/' \
           -e 's/CAFFE_TEST_CUDA_PROP\.deviceOverlap/CAFFE_TEST_CUDA_PROP.asyncEngineCount/' \
           -e 's/CAFFE_TEST_CUDA_PROP\.kernelExecTimeoutEnabled/0/' \
        "$SRC/src/caffe/test/test_platform.cpp"
    if grep -qiE 'prop\.(clockRate|deviceOverlap|kernelExecTimeoutEnabled)' \
            "$SRC/src/caffe/common.cpp" "$SRC/src/caffe/test/test_platform.cpp" \
       || [ "$(grep -c 'cudaDeviceGetAttribute(&v, cudaDevAttr' "$SRC/src/caffe/common.cpp")" != 3 ]; then
        echo "caffe: could not patch the removed cudaDeviceProp fields in common.cpp" >&2; exit 1
    fi
    CUDA_OPTS=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT" -DCUDA_NVCC_EXECUTABLE="$CUDA_ROOT/bin/nvcc"
               -DCUDA_ARCH_NAME=Manual -DCUDA_ARCH_BIN="$CUDA_ARCH" -DCUDA_ARCH_PTX="$CUDA_ARCH"
               -DUSE_NCCL=OFF)
    [ -n "$CUDA_HOST_CXX" ] && CUDA_OPTS+=(-DCUDA_HOST_COMPILER="$CUDA_HOST_CXX")
    STAMP_EXTRA=" cuda=$CUDA_VERSION arch=$CUDA_ARCH"
    say "CUDA $CUDA_VERSION from $CUDA_ROOT, for sm_$CUDA_ARCH only${CUDA_HOST_CXX:+, host compiler $CUDA_HOST_CXX}"
fi
# make where there is one, else Ninja: a CUDA image may carry ninja and no make.
GENERATOR=()
if ! command -v make >/dev/null; then
    command -v ninja >/dev/null || { echo "caffe: CMake needs make or ninja on PATH, and neither is there" >&2; exit 1; }
    GENERATOR=(-G Ninja)
fi
say "configuring (CPU_ONLY=$CPU_ONLY, python $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'))"
mkdir -p "$WORK/build"
(cd "$WORK/build" && cmake "$SRC" ${GENERATOR[@]+"${GENERATOR[@]}"} \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_INSTALL_PREFIX="$PREFIX" "${CMAKE_COMPAT[@]}" \
    -DCPU_ONLY=$CPU_ONLY -DUSE_CUDNN=OFF -DUSE_OPENCV=OFF -DUSE_LEVELDB=OFF -DUSE_LMDB=ON -DBLAS=Open \
    -DBUILD_python=ON -DBUILD_python_layer=ON -Dpython_version=3 \
    -DPYTHON_EXECUTABLE="$PYTHON" -DBUILD_docs=OFF -DBUILD_matlab=OFF "${CUDA_OPTS[@]}" \
    ${CAFFEDSD_CMAKE_ARGS:-} \
    > "$WORK/cmake.log" 2>&1) || { tail -30 "$WORK/cmake.log" >&2; exit 1; }
if grep -q "Python interface is disabled" "$WORK/cmake.log"; then
    grep -iE "python|numpy|boost" "$WORK/cmake.log" >&2
    echo "caffe: CMake did not find what pycaffe needs for $PYTHON (see above)" >&2
    exit 1
fi
if [ -n "${CAFFEDSD_CONFIGURE_ONLY:-}" ]; then  # a check of the configuration alone
    say "configured in $WORK/build; stopping there (CAFFEDSD_CONFIGURE_ONLY)"
    exit 0
fi
say "building with $JOBS jobs (a few minutes)"
(cd "$WORK/build" && cmake --build . -j "$JOBS" > "$WORK/make.log" 2>&1) \
    || { tail -30 "$WORK/make.log" >&2; exit 1; }
(cd "$WORK/build" && cmake --build . --target install > "$WORK/install.log" 2>&1) \
    || { tail -30 "$WORK/install.log" >&2; exit 1; }
[ -x "$PREFIX/bin/caffe" ] || { echo "caffe: build produced no $PREFIX/bin/caffe" >&2; exit 1; }
# Debian's packaging patch installs pycaffe under lib/python3/dist-packages;
# PREFIX/pycaffe names that folder, wherever it is.
so=$(find "$PREFIX" -name '_caffe*.so' -path '*/caffe/*' | head -1)
[ -n "$so" ] || { echo "caffe: build produced no pycaffe (_caffe.so)" >&2; exit 1; }
ln -sfn "$(dirname "$(dirname "$so")")" "$PREFIX/pycaffe"
echo "$VERSION" > "$PREFIX/VERSION"
if [ "$CUDA" = 1 ] && ! grep -q _gpu_data_ptr "$so"; then
    echo "caffe: the CUDA build's pycaffe has no Blob._gpu_data_ptr" >&2; exit 1
fi
echo "debian-source:$VERSION cpu_only=$CPU_ONLY$STAMP_EXTRA" > "$PREFIX/.complete"
[ -n "${CAFFEDSD_KEEP_BUILD:-}" ] || rm -rf "$WORK"
say "installed in $PREFIX"
