#!/usr/bin/env bash
# Sourced by tools/build_caffe.sh and tools/gpu_stage.sh.
#
# A compiler that links libstdc++ into every shared library it makes (a
# wrapper adding -static-libstdc++, as the GPU machine's CXX=/opt/gcc/bin/g++
# does) gives libcaffe its own exported copy of the C++ runtime; in Python,
# glog then calls that copy's ostream code against the process's own
# libstdc++ state, and the first Caffe net segfaults. Such a compiler is
# passed over for CXX, which links libcaffe (nvcc's host compiler only
# compiles). One that does not work at all is left as given.
links_libstdcxx_statically() {  # links_libstdcxx_statically CXX: yes only when seen
    local dir static=1
    dir=$(mktemp -d)
    printf '#include <sstream>\nstd::string f(long x) { std::ostringstream s; s << x; return s.str(); }\n' > "$dir/t.cpp"
    # Word-split on purpose: CXX may be "ccache g++" or "g++ -m64", as CMake takes it.
    # shellcheck disable=SC2086
    if $1 -shared -fPIC -o "$dir/t.so" "$dir/t.cpp" 2>/dev/null \
            && ! readelf -d "$dir/t.so" | grep -q 'NEEDED.*libstdc++'; then
        static=0
    fi
    rm -rf "$dir"
    return $static
}
pick_cxx() {  # pick_cxx VARIABLE: keep $VARIABLE unless it links libstdc++ statically
    local given=${!1:-} each
    # A compiler that does not work here is left for CMake to name.
    [ -n "$given" ] && links_libstdcxx_statically "$given" || return 0
    for each in c++ g++ /usr/bin/c++ /usr/bin/g++; do
        command -v "$each" >/dev/null || continue
        links_libstdcxx_statically "$each" && continue
        "$each" --version >/dev/null 2>&1 || continue
        echo "caffe: $1=$given links libstdc++ statically (libcaffe would crash in Python); using $(command -v "$each")"
        export "$1=$(command -v "$each")"
        return 0
    done
    echo "caffe: $1=$given links libstdc++ statically, which makes libcaffe crash in Python, and no other C++ compiler is here" >&2
    exit 1
}
