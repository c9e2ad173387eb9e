#!/usr/bin/env bash
# Stage a CUDA build of Caffe for a GPU machine that has no apt and no
# network (nvcc, cmake, gcc and a Python with numpy 2 and CuPy there).
#
# On the GPU machine (one H100, Ubuntu 24.04, nvcc 13.0, CMake 4.4, the
# Python 3.12.3 of /opt/torch/.venv; session 32): `all` built in 130-146 s
# on 16 cores; the probe step (tools/gpu_probe.py) and `pytest -m gpu` (24
# passed) ran, and the LeNet bench. Two crashes were found there and fixed:
# its CXX=/opt/gcc/bin/g++ wraps g++ with a static libstdc++, which made
# every pycaffe net segfault in glog (tools/cxx_compiler.sh now passes such
# a compiler over), and a CPU-mode solver collected after the switch to the
# GPU aborted in cudaEventDestroy (caffe_env.import_caffe collects first).
# Not yet run there: the SqueezeNet and VGG16 benches, the demo, replay
# and suite steps.
#
# What ran before, on a 2-core Debian 12 machine:
# - `fetch`;
# - `build ... --cpu` for a bare Python 3.12.1 venv (numpy 2.5, protobuf 7
#   upb, no six: pycaffe needs it, so python3-six is staged): Boost.Python
#   1.74 compiled for 3.12 (deprecation warnings only), CPU Caffe built
#   from the staged root in 3.3 min, pycaffe and libcaffe linked to that
#   Boost.Python (ldd), pycaffe imports;
# - `check` tests, bench, demo, replay and suite, and `all`, with --cpu on
#   that build, Debian's Fashion-MNIST moved away (the demo's numbers equal
#   docs/RESULTS.md's);
# - `build` with CUDA for that Python 3.12 (nvcc 13.0 completed with the
#   cu13 cuBLAS/cuRAND wheels, CAFFEDSD_CUDA_ARCH=90): compiled and
#   installed in 7.0 min on 2 cores (11.5 min of CPU time), linked to the
#   3.12 Boost.Python; pycaffe imports with _gpu_data_ptr; `caffedsd info`
#   says GPU, cuda 13.0, sm_90; with no GPU driver, in CPU mode, the tests
#   that need no GPU pass but the LMDB ones (a prefetch thread calls
#   cudaGetDevice).
# - in a Debian 13 chroot (g++ 14.2, CMake 3.31, Python 3.12.1 in a venv):
#   `build` with CUDA 13.0 (8.7 min), `build --cpu` through make and through
#   Ninja with make taken away, `libs` with libcurl and libquadmath taken
#   away (linked from root/fill, and LDAP 2.5 after them) and with xz taken
#   away (the same tree from Python's tarfile), and `all --cpu` (6 min;
#   tools/rehearse_stage.sh repeats it).
# - `build --cpu` for Python 3.11 with old-style RPATH: caffe and pycaffe load
#   with LD_LIBRARY_PATH unset, glog's libunwind and HDF5's libsz from the
#   stage (LD_DEBUG=libs); `check ... demo --cpu` gave RESULTS.md's table.
# The GPU machine's Python has its headers (/usr/include/python3.12).
#
#   tools/gpu_stage.sh fetch STAGE          here: Debian 12, apt and network
#   tools/gpu_stage.sh all STAGE PYTHON OUTDIR
#                                           there: build, then every check below
#   tools/gpu_stage.sh build STAGE PYTHON   there: no apt, no network
#   tools/gpu_stage.sh libs STAGE           there: do the staged libraries load?
#   tools/gpu_stage.sh check STAGE PYTHON STEP OUTDIR [-- ARGS]
#                                           there, after build (below)
#   ... --cpu after PYTHON or OUTDIR        a rehearsal anywhere: the same steps
#                                           without CUDA (no nvcc needed)
#
# STAGE=gpu-stage is git-ignored. What a device call carries, 59 MB of its
# 64 MiB: STAGE/root.tar.xz, STAGE/src, STAGE/fashion-mnist and STAGE/wheels.
#
# fetch: `apt-get download` of Debian 12's build dependencies (Boost with
#   Boost.Python, glog, gflags, protobuf 3.21 + protoc, HDF5, OpenBLAS,
#   lmdb; runtime and -dev packages) and, in root/fill, what those need
#   that a CUDA image may lack (HDF5's libcurl and its closure, libquadmath;
#   libc, libstdc++, zlib, OpenSSL 3 and GnuTLS are assumed there), unpacked
#   by `dpkg -x` into one tree, which is packed as STAGE/root.tar.xz (its
#   PACKAGES file lists the packages); the Caffe source unpacked by
#   dpkg-source with its sha256 checked (tools/build_caffe.sh's own fetch);
#   Boost.Python's C++ sources from Debian's boost1.74; an lmdb wheel for
#   Python CAFFEDSD_STAGE_PYTHON (3.12, the GPU machine's); Fashion-MNIST.
# libs: STAGE/root.tar.xz is unpacked into STAGE/root, and STAGE/fill gets
#   links to the fill-ins this machine lacks (the first thing build does).
# build: libs; then, if PYTHON is
#   not the 3.11 that Debian 12's Boost.Python was built for, Boost.Python
#   is compiled from the staged sources for PYTHON (its headers must be
#   there: checked first); then tools/build_caffe.sh --cuda with the
#   staged source and CMake pointed into STAGE/root; then `caffedsd info`.
#
# Debian 12's libboost_python311 is built for Python 3.11; a 3.11
# Boost.Python cannot load into 3.12 (different C API/ABI), so for another
# Python `build` compiles libboost_pythonXY from Boost 1.74's own sources
# against that Python's headers.
#
# The checks, from the repo root there (OUTDIR receives logs and results):
#   tests    pytest -m gpu -rs (run, not skipped)
#   demo     tools/demo.sh on GPU 0 (Fashion-MNIST from STAGE/fashion-mnist),
#            every stage's model in stock `caffe test --gpu=0`
#   bench    bench_masked_step.py --gpu 0 --repeats 9 (bench.json after
#            each net; `-- --nets vgg16` passes options on)
#   replay   bench_replay.py --gpu 0: a resumed stage's replay against a step
#   suite    pytest -m "not gpu": the CPU mode of the CUDA build
# `all` runs build, tests, demo, bench (a net at a time, VGG16's three hook
# variants one at a time), replay and suite
# in one call, and a second call with the same command goes on from where
# the first was cut at the device tool's 10 minutes, or failed (STAGE/results
# keeps what finished while the machine stays warm).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MACHINE_LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}  # the machine's own, before stage_env's
CMD=${1:-}
say() { echo "gpu-stage: $*"; }
usage() {  # usage [WHAT IS WRONG]: one line, exit 2
    say "${1:+$1; }usage: gpu_stage.sh fetch STAGE | all STAGE PYTHON OUTDIR [--cpu]" \
        "| libs STAGE | probe STAGE PYTHON [--cpu] | build STAGE PYTHON [--cpu] | check STAGE PYTHON tests|demo|bench|replay|suite OUTDIR [--cpu] [-- ARGS]" >&2
    exit 2
}
[ $# -ge 2 ] || usage
STAGE=$2
STAGE=$(realpath -m "$STAGE")

# What a device call carries (paths under STAGE): 59 MB of its 64 MiB.
CARRY=(root.tar.xz src fashion-mnist wheels)
# The Python there (X.Y), for the wheels of what the tests need and it lacks.
STAGE_PYTHON=${CAFFEDSD_STAGE_PYTHON:-3.12}
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
# Libraries the ones above need that a CUDA image may lack (HDF5's libcurl
# and its closure, libgfortran's libquadmath; Ubuntu 24.04 has LDAP 2.6, not
# 2.5), staged apart in root/fill: `libs` links into STAGE/fill only those
# this machine lacks, so none shadows one of its own. Their own needs that
# any Debian or Ubuntu has (OpenSSL 3, GnuTLS, zstd, libidn2) are not staged.
FILL_DEBS=(libcurl4 libquadmath0 libldap-2.5-0 libsasl2-2 libsasl2-modules-db libnghttp2-14 librtmp1
           libssh2-1 libpsl5 libbrotli1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0
           libkeyutils1 libcom-err2)

fetch() {
    mkdir -p "$STAGE/src"
    local tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/debs" "$tmp/fill" "$tmp/root/fill"
    (cd "$tmp/debs" && apt-get download "${DEBS[@]}" 2>&1 | grep -v "unsandboxed")
    (cd "$tmp/fill" && apt-get download "${FILL_DEBS[@]}" 2>&1 | grep -v "unsandboxed")
    for deb in "$tmp"/fill/*.deb; do
        dpkg -x "$deb" "$tmp/root/fill"
        dpkg-deb --showformat='${Package} ${Version} (fill)\n' -W "$deb" >> "$tmp/root/PACKAGES"
    done
    # One unpacked tree in place of the .debs, less their static libraries,
    # docs and man pages (207 MB, 21 MB as .tar.xz against 35 MB of .debs):
    # then it, the Caffe source and Fashion-MNIST travel in one device call.
    for deb in "$tmp"/debs/*.deb; do
        dpkg -x "$deb" "$tmp/root"
        dpkg-deb --showformat='${Package} ${Version}\n' -W "$deb" >> "$tmp/root/PACKAGES"
    done
    find "$tmp/root" -name '*.a' -delete
    rm -rf "$tmp/root/usr/share/doc" "$tmp/root/usr/share/man" "$tmp/root/usr/share/lintian" \
        "$tmp/root/fill/usr/share" "$tmp/root/fill/etc"
    tar -C "$tmp" -I 'xz -9 -T0' -cf "$STAGE/root.tar.xz.part" root
    mv "$STAGE/root.tar.xz.part" "$STAGE/root.tar.xz"
    rm -rf "$tmp" "$STAGE/root" "$STAGE/src/caffe" "$STAGE/src/boost-python"
    # The Caffe source, as tools/build_caffe.sh fetches and checks it; its
    # build folder is kept (CAFFEDSD_KEEP_BUILD) and only the tree is staged,
    # less its notebooks and pictures (8 of its 17 MB; no build step reads them).
    local probe="$STAGE/src/probe"
    CAFFEDSD_KEEP_BUILD=1 bash "$ROOT/tools/build_caffe.sh" "$(command -v python3)" "$probe" --fetch-only
    mv "$probe.build/src/caffe" "$STAGE/src/caffe"
    rm -rf "$probe.build" "$probe"
    find "$STAGE/src/caffe" \( -name '*.ipynb' -o -name '*.jpg' -o -name '*.png' -o -name '*.gif' -o -name '*.csv.gz' \) -delete
    # Boost.Python's sources (libs/python/src) out of Debian's boost1.74.
    tmp=$(mktemp -d)
    # shellcheck source=debian_source.sh
    . "$ROOT/tools/debian_source.sh"
    fetch_debian_source "$tmp/apt" bookworm boost1.74 "$tmp"
    (cd "$tmp" && dpkg-source --no-check -x boost1.74_*.dsc boost-src >/dev/null)  # Debian's patches applied
    mv "$tmp/boost-src/libs/python/src" "$STAGE/src/boost-python"
    rm -rf "$tmp"
    # lmdb (the LMDB Data-layer tests write their databases with it), which
    # the GPU machine's Python lacks: a wheel for its X.Y, installed by build.
    rm -rf "$STAGE/wheels"
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$STAGE_PYTHON" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d "$STAGE/wheels" 'lmdb>=1.4'
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
    say "staged in $STAGE: $(du -shc "${CARRY[@]/#/$STAGE/}" | tail -1 | cut -f1) to carry" \
        "(${CARRY[*]/#/$(basename "$STAGE")/})"
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
    # CMake and Ninja may be pip's, in PYTHON's venv, which PATH need not name.
    PATH="$PATH:$(dirname "$python")"
    local tool missing=()
    for tool in g++ cmake ldd; do command -v "$tool" >/dev/null || missing+=("$tool"); done
    [ ${#missing[@]} -eq 0 ] || { echo "gpu-stage: the build needs ${missing[*]} on PATH" >&2; exit 1; }
    libs
    stage_env
    local pyver pyinc pylib
    pyver=$("$python" -c 'import sys; print("%d%d" % sys.version_info[:2])')
    local dotted="${pyver:0:1}.${pyver:1}"
    # Boost 1.74's Boost.Python calls PyEval_CallFunction, gone in 3.13.
    [ "$pyver" -le 312 ] || { echo "gpu-stage: $python is Python $dotted; the staged Boost.Python (1.74)" \
        "builds for Python 3.12 at the newest" >&2; exit 1; }
    # Headers and libpython of the same X.Y from elsewhere do (a venv whose
    # base Python came without its -dev files, say): CAFFEDSD_PYTHON_INCLUDE
    # and CAFFEDSD_PYTHON_LIBRARY.
    pyinc=${CAFFEDSD_PYTHON_INCLUDE:-$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')}
    pylib=${CAFFEDSD_PYTHON_LIBRARY:-$("$python" -c 'import sysconfig, os; print(os.path.join(sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("LDLIBRARY")))')}
    [ -f "$pyinc/Python.h" ] || { echo "gpu-stage: $python has no Python.h in $pyinc: pycaffe cannot be built" \
        "for it; Python $dotted headers elsewhere here: $(python_elsewhere "include/python$dotted/Python.h")" \
        "(CAFFEDSD_PYTHON_INCLUDE=DIR takes one)" >&2; exit 1; }
    [ -f "$pylib" ] || { echo "gpu-stage: $python has no shared libpython ($pylib); elsewhere here:" \
        "$(python_elsewhere "lib*/libpython$dotted.so*")" "(CAFFEDSD_PYTHON_LIBRARY=FILE takes one)" >&2; exit 1; }
    if ! "$python" -c 'import lmdb' 2>/dev/null && compgen -G "$STAGE/wheels/*.whl" >/dev/null; then
        # Wheels for another X.Y do not install; the LMDB tests then skip.
        "$python" -m pip install -q --no-index --no-deps --no-compile --target "$STAGE/site" "$STAGE"/wheels/*.whl \
            || say "the staged wheels ($(cd "$STAGE/wheels" && ls)) are not for Python $dotted: the LMDB" \
                   "tests will skip (stage them with CAFFEDSD_STAGE_PYTHON=$dotted tools/gpu_stage.sh fetch)"
    fi
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
    if [ "$pyver" != 311 ] && [ ! -e "$lib/libboost_python$pyver.so.1.74.0" ]; then
        say "compiling Boost.Python for Python $dotted (Debian's is for 3.11)"
        # shellcheck source=cxx_compiler.sh
        . "$ROOT/tools/cxx_compiler.sh"
        pick_cxx CXX
        local cxx=${CXX:-g++}
        local obj="$STAGE/boost-python-$pyver"
        rm -rf "$obj" && mkdir -p "$obj"
        (cd "$STAGE/src/boost-python" && find . -name '*.cpp' -not -path '*numpy*' -printf '%P\n') \
            | xargs -P "$(nproc)" -I{} sh -c '$6 -c -fPIC -O2 -DBOOST_PYTHON_SOURCE -DBOOST_PYTHON_DYN_LINK \
                  -I "$1" -I "$2" -o "$3/$(echo "$4" | tr / _).o" "$5/$4"' \
                  sh "$root/usr/include" "$pyinc" "$obj" {} "$STAGE/src/boost-python" "$cxx"
        # Its RUNPATH names libpython's folder, which need not be in the
        # loader's cache (a venv's base Python under /opt, say).
        $cxx -shared -Wl,-soname,"libboost_python$pyver.so.1.74.0" -Wl,-rpath,"$(dirname "$pylib")" \
            -o "$lib/libboost_python$pyver.so.1.74.0" "$obj"/*.o "$pylib"
        ln -sfn "libboost_python$pyver.so.1.74.0" "$lib/libboost_python$pyver.so"
    fi
    # Debian's CMake config for Boost.Python knows only its 3.11 build, and
    # Caffe would link that for any Python 3: CMake's own FindBoost instead,
    # asked for pythonXY, finds the one compiled above.
    local boost_python=
    [ "$pyver" = 311 ] || boost_python="-DBoost_NO_BOOST_CMAKE=ON -Dpython_version=$dotted"
    # Old-style RPATH, not RUNPATH: the loader also searches it for what the
    # staged libraries need in turn (glog's libunwind, HDF5's libsz and the
    # fill-ins), so caffe and pycaffe run without stage_env's LD_LIBRARY_PATH.
    # CMake puts the staged folders there (Caffe links with their paths).
    local dtags="-Wl,--disable-new-dtags,-rpath,$STAGE/fill"
    CAFFEDSD_CAFFE_SOURCE="$STAGE/src/caffe" CAFFEDSD_CMAKE_ARGS="$boost_python \
-DCMAKE_EXE_LINKER_FLAGS=$dtags -DCMAKE_SHARED_LINKER_FLAGS=$dtags -DCMAKE_MODULE_LINKER_FLAGS=$dtags \
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
exec "$python" -m caffedsd "\$@"
EOF
    chmod +x "$STAGE/bin/caffedsd"
    ln -sfn "$STAGE/caffe/bin/caffe" "$STAGE/bin/caffe"
    ln -sfn "$python" "$STAGE/bin/python"
    caffedsd info
    "$python" -c "import caffe" || { echo "gpu-stage: the staged pycaffe does not import in $python (above)" >&2; exit 1; }
    # Outside stage_env's library path too (the RPATH above), as a user runs
    # them by hand. Every step here runs inside it, so this only warns.
    LD_LIBRARY_PATH=$MACHINE_LD_LIBRARY_PATH "$STAGE/caffe/bin/caffe" --version >/dev/null \
        && LD_LIBRARY_PATH=$MACHINE_LD_LIBRARY_PATH "$python" -c "import caffe" \
        || say "warning: the staged caffe or pycaffe loads only with stage_env's LD_LIBRARY_PATH (above)"
}

# libs: unpack STAGE/root.tar.xz into STAGE/root (once), then make the staged
# libraries load here. Each library this machine lacks is linked into
# STAGE/fill from root/fill, until every staged library and what it needs
# resolves (ldd); one this machine lacks and the stage does not hold stops
# it with one line, before a build that would fail at its link.
libs() {
    local root="$STAGE/root" lib="$STAGE/root/usr/lib/x86_64-linux-gnu" fill="$STAGE/fill"
    if [ ! -f "$root/PACKAGES" ]; then
        [ -f "$STAGE/root.tar.xz" ] || { say "no $STAGE/root.tar.xz: run fetch, and carry it" >&2; exit 2; }
        rm -rf "$root" "$root.part"
        mkdir -p "$root.part"
        if command -v xz >/dev/null; then
            tar -xJf "$STAGE/root.tar.xz" -C "$root.part"
        else  # a CUDA image may lack xz; Python's tarfile reads .xz with its own lzma
            python3 -c 'import sys, tarfile
with tarfile.open(sys.argv[1]) as tar:
    tar.extractall(sys.argv[2], **({"filter": "tar"} if hasattr(tarfile, "tar_filter") else {}))' \
                "$STAGE/root.tar.xz" "$root.part"
        fi
        mv "$root.part/root" "$root"
        rmdir "$root.part"
    fi
    rm -rf "$fill"
    mkdir -p "$fill"
    local missing name found linked=()
    while :; do
        # A library's needs show only once it is found itself: hence rounds.
        # Missing here: a library not found, or one of this machine's that
        # lacks a symbol version the staged ones ask for.
        missing=$(find "$lib" "$fill/" -maxdepth 2 -name '*.so*' \( -type f -o -type l \) -print0 \
            | { LD_LIBRARY_PATH="$lib:$lib/openblas-pthread:$fill" xargs -0 -r ldd 2>&1 || true; } \
            | awk '$2 == "=>" && $3 == "not" {print $1}
                   /version .* not found/ {n = split($2, p, "/"); sub(/:$/, "", p[n]); print p[n]}' | sort -u)
        [ -n "$missing" ] || break
        for name in $missing; do
            found=$(find "$root/fill" -name "$name" \( -type f -o -type l \) -print -quit 2>/dev/null)
            [ -n "$found" ] || { echo "gpu-stage: $name is needed by the staged libraries; this machine" \
                "lacks it and the stage does not hold it ($(grep -l -r -- "$name" "$lib" 2>/dev/null \
                | head -1 | xargs -r basename) needs it)" >&2; exit 1; }
            [ ! -e "$fill/$name" ] || { echo "gpu-stage: $name, staged, does not load here either" >&2; exit 1; }
            ln -s "$found" "$fill/$name"
            linked+=("$name")
        done
    done
    say "libs: the staged libraries load here${linked[0]:+; from the stage, for what this machine lacks: ${linked[*]}}"
}

# python_elsewhere PATTERN: the files under the usual Python prefixes that
# match (e.g. include/python3.12/Python.h), or "none".
python_elsewhere() {
    local found
    found=$(compgen -G "/usr/$1"; compgen -G "/usr/local/$1"; compgen -G "/opt/*/$1"; compgen -G "/usr/lib/x86_64-linux-gnu/${1#lib\*/}"; \
            compgen -G "/root/.local/share/uv/python/*/$1"; compgen -G "/opt/*/.venv/$1") || true
    echo "${found:-none}" | sort -u | tr '\n' ' ' | sed 's/ $//'
}

# The environment the staged Caffe runs in: its libraries, pycaffe, caffedsd.
stage_env() {
    local lib="$STAGE/root/usr/lib/x86_64-linux-gnu"
    export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread:$STAGE/fill${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PATH="$STAGE/bin:$STAGE/root/usr/bin:$PATH"
    export PYTHONPATH="$STAGE/caffe/pycaffe:$ROOT:$STAGE/root/usr/lib/python3/dist-packages:$STAGE/site${PYTHONPATH:+:$PYTHONPATH}"
    export CAFFEDSD_CAFFE_BIN="$STAGE/caffe/bin/caffe" GLOG_minloglevel=${GLOG_minloglevel:-2}
    # Fashion-MNIST for the demo and the tests, where Debian's dataset-fashion-mnist is not installed.
    [ -d /usr/share/datasets/fashion-mnist ] || export CAFFEDSD_FASHION_MNIST="$STAGE/fashion-mnist"
}

# Fashion-MNIST as HDF5 in data/fashion-mnist (the demo's and the LeNet
# solver's), from Debian's package or STAGE/fashion-mnist (stage_env).
fashion_data() {
    [ -f data/fashion-mnist/test.txt ] || caffedsd data fashion-mnist -o data/fashion-mnist
}

check() {
    [ $# -ge 5 ] || usage "check needs PYTHON, STEP and OUTDIR"
    local python=$3 step=$4 out=$5 gpu=0 markers=gpu
    case "$step" in tests|bench|demo|replay|suite) ;; *) usage "unknown step $step" ;; esac
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
    # A test that hangs on the GPU fails alone, instead of holding the call
    # to its end (and the next call after it): pytest-timeout, where installed.
    local limit=()
    "$python" -c 'import pytest_timeout' 2>/dev/null && limit=(--timeout=300)
    case "$step" in
        tests)
            # On the GPU, a GPU test that skips has shown nothing: it fails.
            local require=0
            [ "$markers" != gpu ] || require=1
            CAFFEDSD_REQUIRE_GPU=$require "$python" -m pytest -m "$markers" -rs -p no:cacheprovider \
                ${limit[@]+"${limit[@]}"} tests \
                ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/tests.txt"
            return "${PIPESTATUS[0]}" ;;
        suite)
            # Every test that needs no GPU, in CPU mode on this build (on a
            # CUDA build, Caffe's CPU mode is another path than on a CPU-only one).
            "$python" -m pytest -m "not gpu" -rs -p no:cacheprovider ${limit[@]+"${limit[@]}"} tests \
                ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/suite.txt"
            return "${PIPESTATUS[0]}" ;;
        bench)
            # bench.json is rewritten after each net: a run cut short keeps the nets it finished.
            "$python" tools/bench_masked_step.py ${gpu:+--gpu "$gpu"} --repeats 9 --json "$out/bench.json" \
                ${extra[@]+"${extra[@]}"} 2>&1 | tee "$out/bench.txt"
            return "${PIPESTATUS[0]}" ;;
        replay)
            fashion_data
            "$python" tools/bench_replay.py ${gpu:+--gpu "$gpu"} --repeats 5 --json "$out/replay.json" \
                ${extra[@]+"${extra[@]}"} solvers/lenet_solver.prototxt:400:4000 \
                solvers/squeezenet_fashion_solver.prototxt:100:1000 2>&1 | tee "$out/replay.txt"
            return "${PIPESTATUS[0]}" ;;
        demo)
            fashion_data
            CAFFEDSD_DEMO_GPU=$gpu VENV="$STAGE" bash tools/demo.sh 2>&1 | tee "$out/demo.txt"
            local rc=${PIPESTATUS[0]}
            cp -r work/demo${gpu:+-gpu} "$out/" 2>/dev/null || true
            return "$rc" ;;
    esac
}

# Every step in one device call, in order of need: a call stopped at its
# limit leaves what finished in OUTDIR, and the same command in the next
# call (while the machine is warm, STAGE/results keeps what finished) goes
# on from the step that was cut or failed. OUTDIR gets three files: summary.txt,
# all.log and results.tar.gz (STAGE/results, without models).
all() {
    [ $# -ge 4 ] || usage "all needs PYTHON and OUTDIR"
    local python=$3 out=$4 cpu= self="$ROOT/tools/gpu_stage.sh"
    case "${5:-}" in
        "") ;;
        --cpu) cpu=--cpu ;;
        *) usage "unknown option ${5} (expected --cpu)" ;;
    esac
    mkdir -p "$out" "$STAGE/results"
    out=$(realpath "$out")
    RESULTS="$STAGE/results" OUT="$out" FAILED=()
    exec > >(tee -a "$out/all.log") 2>&1
    all_publish
    say "all: $(date -u +%FT%TZ), $(nproc) cores; $(nvidia-smi --query-gpu=name,driver_version,compute_cap \
        --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi')"
    say "all: $("$python" --version 2>&1); $( (. "$ROOT/tools/cuda_toolkit.sh" && "$(cuda_nvcc)" --version | tail -1) 2>/dev/null || echo 'no nvcc');" \
        "$(cmake --version 2>/dev/null | head -1 || echo 'no cmake'); $(g++ --version 2>/dev/null | head -1 || echo 'no g++')"
    all_step build bash "$self" build "$STAGE" "$python" $cpu || { say "all: the build failed (above)"; return 1; }
    # pycaffe's own steps first: where they crash, every step below would too.
    all_step probe bash "$self" probe "$STAGE" "$python" $cpu || { say "all: pycaffe crashes (above)"; return 1; }
    # A failed step is reported, and the next one runs.
    all_step tests bash "$self" check "$STAGE" "$python" tests "$RESULTS/tests" $cpu || true
    local net variant
    for net in lenet squeezenet; do
        # --profile: where LeNet's device ratio (1.10 in session 32) loses
        # its 0.5 ms beyond the hook points' own cost, Python or Caffe's step.
        all_step "bench-$net" bash "$self" check "$STAGE" "$python" bench "$RESULTS/bench-$net" $cpu \
            -- --nets "$net" --profile "$RESULTS/bench-$net" || true
    done
    # VGG16 a variant a step: the three together may outlast a call's 10
    # minutes, and a step cut short runs again whole. (On 2 CPU cores it
    # would take hours: not with --cpu.)
    if [ -z "$cpu" ]; then
        for variant in device host device+force; do
            all_step "bench-vgg16-${variant/+/-}" bash "$self" check "$STAGE" "$python" bench \
                "$RESULTS/bench-vgg16-${variant/+/-}" -- --nets vgg16 --variants "$variant" || true
        done
    fi
    all_step demo bash "$self" check "$STAGE" "$python" demo "$RESULTS/demo" $cpu || true
    all_step replay bash "$self" check "$STAGE" "$python" replay "$RESULTS/replay" $cpu || true
    [ -n "$cpu" ] || all_step suite bash "$self" check "$STAGE" "$python" suite "$RESULTS/suite" || true
    cat "$RESULTS/summary.txt"
    [ ${#FAILED[@]} -eq 0 ] || { say "all: failed: ${FAILED[*]} (the same command runs them again)"; return 1; }
    say "all: done"
}

# all_step NAME COMMAND...: run it unless an earlier call ran it to exit
# 0 (a failed step runs again, after a fix say); add its exit status and
# time to the summary, and refresh OUTDIR's files.
all_step() {
    local name=$1 rc=0 start
    shift
    if [ -f "$RESULTS/$name.done" ]; then
        say "$name: done in an earlier call ($(cat "$RESULTS/$name.done"))"
        return 0
    fi
    say "$name: $*"
    start=$(date +%s)
    "$@" 2>&1 | tee "$RESULTS/$name.log" || rc=${PIPESTATUS[0]}
    local took="exit $rc after $(( $(date +%s) - start )) s"
    if [ "$rc" = 0 ]; then echo "$took" > "$RESULTS/$name.done"; else FAILED+=("$name"); fi
    all_publish "$name: $took" "$RESULTS/$name.log"
    return "$rc"
}

# all_publish [LINE LOG]: add LINE and LOG's results to the summary, then
# copy the summary and a tarball of STAGE/results into OUTDIR.
# probe STAGE PYTHON [--cpu]: a tiny net and solver through pycaffe, in CPU
# mode and on GPU 0, each step named before it runs (tools/gpu_probe.py); a
# mode that crashes runs again under cuda-gdb, where there is one, for the
# C++ backtrace. Also which compilers built what.
probe() {
    [ $# -ge 3 ] || usage "probe needs PYTHON"
    local python=$3 modes="bare cpu gpu" mode rc=0
    [ "${4:-}" != --cpu ] || modes="bare cpu"
    [ -f "$STAGE/caffe/.complete" ] || { say "no finished build in $STAGE/caffe: run build first" >&2; exit 2; }
    say "probe: CUDAHOSTCXX=${CUDAHOSTCXX:-unset}; c++: $(c++ -dumpfullversion 2>/dev/null)"
    stage_env
    cd "$ROOT"
    for mode in $modes; do
        if "$python" tools/gpu_probe.py "$mode" "$STAGE/probe-$mode"; then
            say "probe: $mode mode works"
            continue
        fi
        rc=1
        if command -v cuda-gdb >/dev/null; then
            cuda-gdb -q -batch -ex run -ex bt --args "$python" tools/gpu_probe.py "$mode" "$STAGE/probe-$mode" 2>&1 \
                | grep -E '^#[0-9]|signal|^probe' | cut -c1-300 | head -40
        fi
    done
    # The stock binary on the same net, no Python in the process: glog's
    # failure handler prints the stack of a crash.
    say "probe: caffe time, CPU mode"
    GLOG_minloglevel=0 "$STAGE/caffe/bin/caffe" time --model="$STAGE/probe-cpu/net.prototxt" --iterations=1 2>&1 \
        | grep -vE '^I.*(layer_factory|net.cpp:[0-9]+\] (Setting|Top|Memory|Creating|This|Network|Initializing|[a-z]+ (needs|does)))' \
        | tail -25 || rc=1
    return "$rc"
}

all_publish() {
    [ $# -eq 0 ] || {
        echo "$1"
        # pytest's last line, the demo's accuracies, the benchmarks' tables
        grep -E '^\||^=+ .*(passed|failed|error)|^   0[1-4]-|^Machine:' "$2" | sed 's/^/    /'
    } >> "$RESULTS/summary.txt"
    [ ! -f "$RESULTS/summary.txt" ] || cp "$RESULTS/summary.txt" "$OUT/summary.txt"
    tar -C "$STAGE" --exclude='*.caffemodel' --exclude='*.solverstate' --exclude='*.h5' \
        -czf "$OUT/results.tar.gz.part" results && mv "$OUT/results.tar.gz.part" "$OUT/results.tar.gz"
}

case "$CMD" in
    fetch) fetch ;;
    build) build "$@" ;;
    libs) libs ;;
    check) check "$@" ;;
    probe) probe "$@" ;;
    all) all "$@" ;;
    *) usage "unknown command ${CMD}" ;;
esac
