# Sourced by build_caffe.sh and gpu_stage.sh: fetch a Debian source package
# through a private apt configuration (the machine's own is never edited),
# from the mirror this machine's apt already uses for Debian (overridable),
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

fetch_debian_source() {  # fetch_debian_source APT_DIR DIST PACKAGE[=VERSION] DEST
    local apt=$1 dist=$2 package=$3 dest=$4 mirror
    mirror=$(debian_mirror)
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial" "$dest"
    echo "deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $dist main" > "$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
                -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache" -o APT::Sandbox::User=root -q)
    apt-get "${opts[@]}" update >/dev/null
    (cd "$dest" && apt-get "${opts[@]}" source --download-only "$package" >/dev/null)
}
