#!/usr/bin/env bash
# Sourced by tools/build_caffe.sh and tools/gpu_stage.sh.
#
# A compiler that links libstdc++ into every shared library it makes (a
# wrapper adding -static-libstdc++, as the GPU machine's CXX=/opt/gcc/bin/g++
# does) gives libcaffe its own exported copy of the C++ runtime; in Python,
# glog then calls that copy's ostream code against the process's own
# libstdc++ state, and the first Caffe net segfaults. Such a compiler is
# passed over, for CXX and for nvcc's host compiler alike.
shares_libstdcxx() {  # shares_libstdcxx CXX
    local dir ok=1
    dir=$(mktemp -d)
    printf '#include <sstream>\nstd::string f(long x) { std::ostringstream s; s << x; return s.str(); }\n' > "$dir/t.cpp"
    if "$1" -shared -fPIC -o "$dir/t.so" "$dir/t.cpp" 2>/dev/null \
            && readelf -d "$dir/t.so" | grep -q 'NEEDED.*libstdc++'; then
        ok=0
    fi
    rm -rf "$dir"
    return $ok
}
pick_cxx() {  # pick_cxx VARIABLE: keep $VARIABLE, or the first compiler that shares libstdc++
    local given=${!1:-} each
    [ -z "$given" ] || ! shares_libstdcxx "$given" || return 0
    for each in c++ g++ /usr/bin/c++ /usr/bin/g++; do
        command -v "$each" >/dev/null && shares_libstdcxx "$each" || continue
        [ -z "$given" ] || echo "caffe: $1=$given links libstdc++ statically (libcaffe would crash in Python); using $(command -v "$each")"
        export "$1=$(command -v "$each")"
        return 0
    done
    echo "caffe: no C++ compiler here links libstdc++ as a shared library${given:+ ($1=$given does not)}" >&2
    exit 1
}
