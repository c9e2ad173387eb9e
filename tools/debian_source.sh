# Sourced by build_caffe.sh, gpu_stage.sh and check_cuda.sh: fetch a Debian
# source package, or binary packages, through a private apt configuration
# (the machine's own is never edited), from the mirror this machine's apt
# already uses for Debian (overridable), read from its sources, so no host
# name is written into this project.

debian_mirror() {
    if [ -n "${CAFFEDSD_DEBIAN_MIRROR:-}" ]; then
        echo "$CAFFEDSD_DEBIAN_MIRROR"; return
    fi
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
          | awk '$1=="deb" && $0 !~ /security/ {for(i=2;i<=NF;i++) if ($i ~ /^(https?|file):/) {print $i; exit}}')
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null \
              | awk '/^URIs:/ && $0 !~ /security/ {print $2; exit}')
    fi
    [ -n "$uri" ] || { echo "caffe: cannot find a Debian mirror in apt's sources; set CAFFEDSD_DEBIAN_MIRROR" >&2; exit 1; }
    echo "$uri"
}

# Writes one sources line ("deb" or "deb-src", then DIST and COMPONENTS) into
# a private apt configuration in APT_DIR, reads its index, and leaves the
# apt-get options for that configuration in DEBIAN_APT_OPTS.
debian_apt_update() {  # debian_apt_update APT_DIR TYPE DIST "COMPONENT..."
    local apt=$1 type=$2 dist=$3 components=$4 mirror
    mirror=$(debian_mirror) || return 1
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "$type [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $dist $components" > "$apt/sources.list"
    DEBIAN_APT_OPTS=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
                     -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root -q)
    apt-get "${DEBIAN_APT_OPTS[@]}" update >/dev/null
}

fetch_debian_source() {  # fetch_debian_source APT_DIR DIST PACKAGE[=VERSION] DEST
    local apt=$1 dist=$2 package=$3 dest=$4
    mkdir -p "$dest"
    debian_apt_update "$apt" deb-src "$dist" main || return 1
    (cd "$dest" && apt-get "${DEBIAN_APT_OPTS[@]}" source --download-only "$package" >/dev/null)
}

# Binary packages of any Debian release and component (non-free included),
# for this machine's architecture, without their dependencies: what is
# unpacked with `dpkg -x` rather than installed.
fetch_debian_debs() {  # fetch_debian_debs APT_DIR DIST "COMPONENT..." DEST PACKAGE...
    local apt=$1 dist=$2 components=$3 dest=$4 p
    shift 4
    mkdir -p "$dest"
    debian_apt_update "$apt" deb "$dist" "$components" || return 1
    (cd "$dest" && apt-get "${DEBIAN_APT_OPTS[@]}" download "$@" 2>&1 | grep -v -e "unsandboxed" -e "^Get:" -e "^Fetched" || true)
    for p in "$@"; do
        compgen -G "$dest/${p%%=*}_*.deb" >/dev/null \
            || { echo "debian: $p was not downloaded from $dist ($components)" >&2; return 1; }
    done
}
