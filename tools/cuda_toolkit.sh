# Sourced by setup.sh, build_caffe.sh and check_cuda.sh: which CUDA toolkit
# and which GPU architecture a CUDA build of Caffe is made for.
#
#   nvcc      $CUDA_HOME/bin/nvcc when CUDA_HOME is set, else nvcc on PATH
#   toolkit   $CUDA_HOME, else the TOP nvcc itself reports (a wrapper script
#             on PATH is followed to the real toolkit)
#   arch      $CAFFEDSD_CUDA_ARCH (e.g. 90 or 9.0), else the compute
#             capability of GPU 0 from nvidia-smi; one arch only, because
#             Caffe's default list starts at compute_20, which no current
#             nvcc accepts
#
# Each function prints its answer, or a one-line reason on stderr and fails.

cuda_nvcc() {
    local nvcc
    if [ -n "${CUDA_HOME:-}" ]; then
        nvcc="$CUDA_HOME/bin/nvcc"
    else
        nvcc=$(command -v nvcc || true)
        # NVIDIA's installers put the toolkit there without touching PATH.
        [ -n "$nvcc" ] || [ ! -x /usr/local/cuda/bin/nvcc ] || nvcc=/usr/local/cuda/bin/nvcc
    fi
    if [ -z "$nvcc" ] || [ ! -x "$nvcc" ]; then
        echo "cuda: no nvcc (looked in \$CUDA_HOME/bin, PATH and /usr/local/cuda/bin); install a CUDA toolkit or set CUDA_HOME" >&2
        return 1
    fi
    echo "$nvcc"
}

cuda_root() {
    if [ -n "${CUDA_HOME:-}" ]; then
        realpath -m "$CUDA_HOME"; return
    fi
    local nvcc top
    nvcc=$(cuda_nvcc) || return 1
    top=$("$nvcc" --dryrun -x cu -c /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -1)
    [ -n "$top" ] || { echo "cuda: $nvcc did not report its toolkit folder; set CUDA_HOME" >&2; return 1; }
    realpath -m "$top"
}

cuda_version() {  # major.minor, e.g. 13.0
    local nvcc version
    nvcc=$(cuda_nvcc) || return 1
    version=$("$nvcc" --version | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -1)
    [ -n "$version" ] || { echo "cuda: cannot read the CUDA version from $nvcc --version" >&2; return 1; }
    echo "$version"
}

cuda_arch() {  # e.g. 90
    local arch="${CAFFEDSD_CUDA_ARCH:-}"
    if [ -z "$arch" ] && command -v nvidia-smi >/dev/null 2>&1; then
        arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d ' ')
    fi
    arch=${arch//./}
    case "$arch" in
        [1-9][0-9]|[1-9][0-9][0-9]) echo "$arch" ;;
        "") echo "cuda: no GPU architecture: no GPU seen by nvidia-smi; set CAFFEDSD_CUDA_ARCH (90 for an H100)" >&2
            return 1 ;;
        *) echo "cuda: CAFFEDSD_CUDA_ARCH=$arch: expected a compute capability such as 90 or 8.6" >&2
           return 1 ;;
    esac
}

# One CUDA tree out of several folders that each hold some of bin, include,
# nvvm and lib: PyPI's NVIDIA wheels (nvidia/cu13/ for 13.x, one folder per
# wheel under nvidia/ for 12.x), or a partial toolkit plus the cuBLAS and
# cuRAND wheels a Python environment carries. bin, include and nvvm are
# merged as links (first one wins), lib64 gets a link for each shared
# library plus an unversioned .so link (what CMake's FindCUDA looks for).
cuda_merge_toolkit() {  # cuda_merge_toolkit OUT DIR...
    local out=$1 pkg sub lib base
    shift
    mkdir -p "$out/bin" "$out/include" "$out/nvvm" "$out/lib64"
    for pkg in "$@"; do
        pkg=${pkg%/}
        for sub in bin include nvvm; do
            [ -d "$pkg/$sub" ] && cp -rsn "$(realpath "$pkg/$sub")/." "$out/$sub/"
        done
        for lib in "$pkg"/lib/*.so* "$pkg"/lib64/*.so*; do
            [ -e "$lib" ] || continue
            [ -e "$out/lib64/$(basename "$lib")" ] || ln -s "$(realpath "$lib")" "$out/lib64/$(basename "$lib")"
            base=$(basename "$lib" | sed 's/\.so\..*$/.so/')
            [ -e "$out/lib64/$base" ] || ln -s "$(realpath "$lib")" "$out/lib64/$base"
        done
    done
    [ -x "$out/bin/nvcc" ] || { echo "cuda: no bin/nvcc among $* (only: $(ls "$out/bin" | tr '\n' ' '))" >&2; return 1; }
    local missing=()
    for need in include/cuda_runtime.h include/cublas_v2.h include/curand.h lib64/libcudart.so lib64/libcublas.so lib64/libcurand.so; do
        [ -e "$out/$need" ] || missing+=("$need")
    done
    [ ${#missing[@]} -eq 0 ] || { echo "cuda: the merged toolkit lacks ${missing[*]}" >&2; return 1; }
}

# A CUDA tree out of Debian's packaging of the toolkit (non-free
# nvidia-cuda-toolkit, nvidia-cuda-dev and the libraries they name), unpacked
# by dpkg -x into ROOT. Debian spreads the toolkit over /usr/bin, /usr/include
# and /usr/lib/<triplet>, and its nvcc finds them through /etc/nvcc.profile's
# absolute paths, so the unpacked nvcc gets a profile of its own naming OUT
# (and the unpacked library folder, for the static runtime nvcc links).
cuda_debian_toolkit() {  # cuda_debian_toolkit OUT ROOT
    local out root layout tool libdir
    out=$(realpath -m "$1")
    root=$(realpath "$2")
    layout="$root/cuda-layout"
    libdir=$(compgen -G "$root/usr/lib/*-linux-gnu" | head -1)
    [ -x "$root/usr/lib/nvidia-cuda-toolkit/bin/nvcc" ] && [ -n "$libdir" ] \
        || { echo "cuda: $root holds no unpacked nvidia-cuda-toolkit" >&2; return 1; }
    rm -rf "$layout"
    mkdir -p "$layout/bin" "$layout/nvvm" "$layout/lib"
    # A copy, not a link: nvcc reads the nvcc.profile in the folder it runs from.
    cp "$root/usr/lib/nvidia-cuda-toolkit/bin/nvcc" "$layout/bin/"
    ln -s "$root/usr/lib/nvidia-cuda-toolkit/bin/cicc" "$root/usr/lib/nvidia-cuda-toolkit/bin/crt" "$layout/bin/"
    for tool in ptxas fatbinary cudafe++ nvlink bin2c nvprune cuobjdump; do
        [ -e "$root/usr/bin/$tool" ] && ln -s "$root/usr/bin/$tool" "$layout/bin/"
    done
    cat > "$layout/bin/nvcc.profile" <<PROFILE
TOP = $out
NVVMIR_LIBRARY_DIR = \$(TOP)/nvvm/libdevice
PATH += \$(TOP)/bin:
INCLUDES += "-I\$(TOP)/include" \$(_SPACE_)
LIBRARIES =+ \$(_SPACE_) "-L\$(TOP)/lib64" "-L$libdir"
PROFILE
    ln -s "$root/usr/include" "$layout/include"
    ln -s "$root/usr/lib/nvidia-cuda-toolkit/libdevice" "$layout/nvvm/libdevice"
    ln -s "$libdir"/lib*.so* "$layout/lib/"
    cuda_merge_toolkit "$out" "$layout"
}

# The host compiler nvcc is given (CMake's CUDA_HOST_COMPILER), or nothing
# for the C++ compiler CMake picks. CUDAHOSTCXX, CMake's own variable, wins.
# nvcc refuses a g++ newer than its release knows (11.x takes g++ up to 11,
# 12.0-12.3 up to 12, 12.4-12.7 up to 13, 12.8-12.9 up to 14, 13.x up to 15),
# so then the newest older g++-N on PATH is taken, as Debian's nvcc wrapper does.
cuda_host_compiler() {  # cuda_host_compiler CUDA_VERSION
    if [ -n "${CUDAHOSTCXX:-}" ]; then echo "$CUDAHOSTCXX"; return; fi
    local version=$1 major minor newest gxx n
    major=${version%%.*}; minor=${version#*.}; minor=${minor%%.*}
    case "$major" in
        11) newest=11 ;;
        12) if [ "$minor" -lt 4 ]; then newest=12; elif [ "$minor" -lt 8 ]; then newest=13; else newest=14; fi ;;
        13) newest=15 ;;
        *) return 0 ;;  # a release this table does not know: let nvcc judge
    esac
    gxx=$(c++ -dumpversion 2>/dev/null); gxx=${gxx%%.*}
    { [ -z "$gxx" ] || [ "$gxx" -le "$newest" ]; } && return 0
    for n in $(seq "$newest" -1 7); do
        command -v "g++-$n" >/dev/null 2>&1 && { command -v "g++-$n"; return; }
    done
    echo "cuda: CUDA $version's nvcc takes g++ up to $newest, and c++ here is g++ $gxx; install g++-$newest or set CUDAHOSTCXX" >&2
    return 1
}
