# Sourced by build_caffe.sh, gpu_stage.sh and check_cuda.sh: fetch a Debian
# source package, or binary packages, through a private apt configuration
# (the machine's own is never edited), from the mirror this machine's apt already uses for Debian (overridable),
# read from its sources, so no host name is written into this project.

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

debian_apt_opts() {  # debian_apt_opts APT_DIR: apt-get options for a private configuration there
    local apt=$1
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo -o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null \
         -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root -q
}

fetch_debian_source() {  # fetch_debian_source APT_DIR DIST PACKAGE[=VERSION] DEST
    local apt=$1 dist=$2 package=$3 dest=$4 mirror opts
    mirror=$(debian_mirror)
    opts=$(debian_apt_opts "$apt")
    mkdir -p "$dest"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $dist main" > "$apt/sources.list"
    # shellcheck disable=SC2086 # the options hold no spaces
    apt-get $opts update >/dev/null
    # shellcheck disable=SC2086
    (cd "$dest" && apt-get $opts source --download-only "$package" >/dev/null)
}

# Binary packages of any Debian release and component (non-free included),
# for this machine's architecture, without their dependencies: what is
# unpacked with `dpkg -x` rather than installed.
fetch_debian_debs() {  # fetch_debian_debs APT_DIR DIST "COMPONENT..." DEST PACKAGE...
    local apt=$1 dist=$2 components=$3 dest=$4 mirror opts
    shift 4
    mirror=$(debian_mirror)
    opts=$(debian_apt_opts "$apt")
    mkdir -p "$dest"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $dist $components" > "$apt/sources.list"
    # shellcheck disable=SC2086
    apt-get $opts update >/dev/null
    # shellcheck disable=SC2086
    (cd "$dest" && apt-get $opts download "$@" 2>&1 | grep -v -e "unsandboxed" -e "^Get:" -e "^Fetched" || true)
    local p
    for p in "$@"; do
        compgen -G "$dest/${p%%=*}_*.deb" >/dev/null \
            || { echo "debian: $p was not downloaded from $dist ($components)" >&2; return 1; }
    done
}
