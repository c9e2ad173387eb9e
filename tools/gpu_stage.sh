#!/usr/bin/env bash
# Stage a CUDA build of Caffe for a GPU machine that has no apt and no
# network (nvcc, cmake, gcc and a Python with numpy 2 and CuPy there).
#
# NOT YET RUN ON A GPU. What has run, on a 2-core Debian 12 machine:
# - `fetch` (50 MB for build, 30 MB of Fashion-MNIST for the demo);
# - `build ... --cpu` for a bare Python 3.12.1 venv (numpy 2.5, protobuf 7
#   upb, no six: pycaffe needs it, so python3-six is staged): Boost.Python
#   1.74 compiled for 3.12 (deprecation warnings only), CPU Caffe built
#   from the staged root, pycaffe imports;
# - `check` tests, bench and demo with --cpu on that build (the demo's
#   numbers equal docs/RESULTS.md's);
# - `build` with CUDA for that Python 3.12 (nvcc 13.0 completed with the
#   cu13 cuBLAS/cuRAND wheels, CAFFEDSD_CUDA_ARCH=90): compiled and
#   installed in 9.4 min on 2 cores; pycaffe imports with _gpu_data_ptr.
# Nothing has run on the GPU machine itself.
#
#   tools/gpu_stage.sh fetch STAGE          here: Debian 12, apt and network
#   tools/gpu_stage.sh build STAGE PYTHON   there: no apt, no network
#   tools/gpu_stage.sh build STAGE PYTHON --cpu
#                                           a rehearsal anywhere: the same steps
#                                           without CUDA (no nvcc needed)
#   tools/gpu_stage.sh check STAGE PYTHON STEP OUTDIR [--cpu] [-- ARGS]
#                                           there, after build (below)
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
# Debian 12's libboost_python311 is built for Python 3.11; a 3.11
# Boost.Python cannot load into 3.12 (different C API/ABI), so for another
# Python `build` compiles libboost_pythonXY from Boost 1.74's own sources
# against that Python's headers.
#
# After `build`, from the repo root there, one step per call (each well
# under the device tool's 10 minutes; OUTDIR receives logs and results):
#   tools/gpu_stage.sh check STAGE PYTHON tests OUTDIR   pytest -m gpu -rs (run, not skipped)
#   tools/gpu_stage.sh check STAGE PYTHON bench OUTDIR   bench_masked_step.py --gpu 0 --repeats 9
#                                                        (bench.json after each net; `-- --nets vgg16`
#                                                        passes options on, if 10 minutes are too few)
#   tools/gpu_stage.sh check STAGE PYTHON demo OUTDIR    tools/demo.sh on GPU 0 (Fashion-MNIST
#                                                        from STAGE/fashion-mnist, 30 MB)
# STAGE/debs and STAGE/src (51 MB) travel for `build`, STAGE/fashion-mnist
# for `demo` alone: one call carries at most 64 MB. With --cpu after OUTDIR
# the same steps run on the CPU build (a rehearsal).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMD=${1:-}
say() { echo "gpu-stage: $*"; }
usage() {  # usage [WHAT IS WRONG]: one line, exit 2
    say "${1:+$1; }usage: gpu_stage.sh fetch STAGE | build STAGE PYTHON [--cpu]" \
        "| check STAGE PYTHON tests|bench|demo OUTDIR [--cpu] [-- ARGS]" >&2
    exit 2
}
[ $# -ge 2 ] || usage
STAGE=$2
STAGE=$(realpath -m "$STAGE")

DEBS=(libboost1.74-dev
      libboost-system1.74-dev libboost-system1.74.0 libboost-thread1.74-dev libboost-thread1.74.0
      libboost-filesystem1.74-dev libboost-filesystem1.74.0 libboost-atomic1.74-dev libboost-atomic1.74.0
      libboost-chrono1.74-dev libboost-chrono1.74.0 libboost-date-time1.74-dev libboost-date-time1.74.0
      libboost-python1.74-dev libboost-python1.74.0
      libgoogle-glog-dev libgoogle-glog0v6 libunwind8 libgflags-dev libgflags2.2
      libprotobuf-dev libprotobuf32 libprotobuf-lite32 libprotoc32 protobuf-compiler
      libhdf5-dev libhdf5-103-1 libhdf5-hl-100 libhdf5-cpp-103-1 libhdf5-hl-cpp-100 libsz2 libaec0
      libopenblas-dev libopenblas-pthread-dev libopenblas0 libopenblas0-pthread libgfortran5
      liblmdb-dev liblmdb0
      python3-six)  # pycaffe imports six; the GPU machine's Python may lack it

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
    # Fashion-MNIST's four .gz files (Debian's dataset-fashion-mnist), for the demo.
    mkdir -p "$STAGE/fashion-mnist"
    if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
        tmp=$(mktemp -d)
        (cd "$tmp" && apt-get download dataset-fashion-mnist 2>&1 | grep -v "unsandboxed" || true)
        dpkg -x "$tmp"/dataset-fashion-mnist_*.deb "$tmp/root"
        cp "$tmp"/root/usr/share/datasets/fashion-mnist/*.gz "$STAGE/fashion-mnist/"
        rm -rf "$tmp"
    else
        cp /usr/share/datasets/fashion-mnist/*.gz "$STAGE/fashion-mnist/"
    fi
    say "staged in $STAGE ($(du -sh "$STAGE" | cut -f1)): STAGE/debs and STAGE/src ($(du -shc "$STAGE/debs" "$STAGE/src" | tail -1 | cut -f1)) for \`$0 build STAGE PYTHON\` there, STAGE/fashion-mnist for its demo"
}

build() {
    [ $# -ge 3 ] || usage "build needs PYTHON"
    local python=$3 device=--cuda
    case "${4:-}" in
        "") ;;
        --cpu) device= ;;
        *) usage "unknown option ${4} (expected --cpu)" ;;
    esac
    python=$(command -v "$python" || echo "$python")
    local root="$STAGE/root" lib="$STAGE/root/usr/lib/x86_64-linux-gnu"
    mkdir -p "$root"
    for deb in "$STAGE"/debs/*.deb; do dpkg -x "$deb" "$root"; done
    stage_env
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
    [ -n "$device" ] && cuda=$(cuda_root)
    if [ -n "$device" ] && { [ ! -e "$cuda/lib64/libcublas.so" ] || [ ! -e "$cuda/lib64/libcurand.so" ]; }; then
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
        bash "$ROOT/tools/build_caffe.sh" "$python" "$STAGE/caffe" $device
    # STAGE/bin stands in for a venv's bin (tools/demo.sh's VENV): caffedsd,
    # caffe and python.
    mkdir -p "$STAGE/bin"
    cat > "$STAGE/bin/caffedsd" <<EOF
#!/bin/sh
exec "$python" -c "from caffedsd.cli import main; main(prog_name='caffedsd')" "\$@"
EOF
    chmod +x "$STAGE/bin/caffedsd"
    ln -sfn "$STAGE/caffe/bin/caffe" "$STAGE/bin/caffe"
    ln -sfn "$python" "$STAGE/bin/python"
    caffedsd info
    "$python" -c "import caffe" || { echo "gpu-stage: the staged pycaffe does not import in $python (above)" >&2; exit 1; }
}

# The environment the staged Caffe runs in: its libraries, pycaffe, caffedsd.
stage_env() {
    local lib="$STAGE/root/usr/lib/x86_64-linux-gnu"
    export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PATH="$STAGE/bin:$STAGE/root/usr/bin:$PATH"
    export PYTHONPATH="$STAGE/caffe/pycaffe:$ROOT:$STAGE/root/usr/lib/python3/dist-packages${PYTHONPATH:+:$PYTHONPATH}"
    export CAFFEDSD_CAFFE_BIN="$STAGE/caffe/bin/caffe" GLOG_minloglevel=${GLOG_minloglevel:-2}
}

check() {
    [ $# -ge 5 ] || usage "check needs PYTHON, STEP and OUTDIR"
    local python=$3 step=$4 out=$5 gpu=0 markers=gpu
    case "$step" in tests|bench|demo) ;; *) usage "unknown step $step" ;; esac
    shift 5
    if [ "${1:-}" = --cpu ]; then gpu= markers=caffe; shift; fi
    # After --, arguments for the step's own command (pytest, bench_masked_step.py).
    local extra=()
    case "${1:-}" in
        "") ;;
        --) shift; extra=("$@") ;;
        *) usage "unknown option ${1} (expected --cpu or --)" ;;
    esac
    [ -f "$STAGE/caffe/.complete" ] || { say "no finished build in $STAGE/caffe: run build first" >&2; exit 2; }
    mkdir -p "$out"
    out=$(realpath "$out")
    stage_env
    cd "$ROOT"
    caffedsd info | tee "$out/info.txt"
    case "$step" in
        tests)
            "$python" -m pytest -m "$markers" -rs -p no:cacheprovider tests ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/tests.txt"
            return "${PIPESTATUS[0]}" ;;
        bench)
            # bench.json is rewritten after each net: a run cut short keeps the nets it finished.
            "$python" tools/bench_masked_step.py ${gpu:+--gpu "$gpu"} --repeats 9 --json "$out/bench.json" \
                ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/bench.txt"
            return "${PIPESTATUS[0]}" ;;
        demo)
            if [ ! -f data/fashion-mnist/test.txt ]; then
                [ -f "$STAGE/fashion-mnist/train-images-idx3-ubyte.gz" ] \
                    || { echo "gpu-stage: no $STAGE/fashion-mnist/*.gz (staged by fetch; carry it)" >&2; exit 1; }
                caffedsd data fashion-mnist --source "$STAGE/fashion-mnist" -o data/fashion-mnist
            fi
            CAFFEDSD_DEMO_GPU=$gpu VENV="$STAGE" bash tools/demo.sh 2>&1 | tee "$out/demo.txt"
            local rc=${PIPESTATUS[0]}
            cp -r work/demo${gpu:+-gpu} "$out/" 2>/dev/null || true
            return "$rc" ;;
    esac
}

case "$CMD" in
    fetch) fetch ;;
    build) build "$@" ;;
    check) check "$@" ;;
    *) usage "unknown command ${CMD}" ;;
esac
