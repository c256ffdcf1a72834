#!/usr/bin/env bash
# Build (once) a real kube-apiserver for the k8s test suite and cache it.
#
#   tests/k8s/setup_apiserver.sh            # build if missing, print the binary path
#   FTRAIN_K8S_CACHE=/some/dir tests/k8s/setup_apiserver.sh
#
# What it does:
#   1. apt-get install etcd-server golang-go rsync jq golang-github-modern-go-reflect2-dev openssl
#   2. fetch Debian bookworm's `kubernetes` source package (1.20.2) with a private deb-src list
#   3. replace vendor/github.com/modern-go/reflect2 by Debian's copy (the vendored one
#      segfaults with Go >= 1.18 on custom resources)
#   4. GOPROXY=off KUBE_GIT_VERSION=v1.20.2 KUBE_GIT_TREE_STATE=clean make WHAT=cmd/kube-apiserver
#   5. copy the binary to $FTRAIN_K8S_CACHE/kube-apiserver (default ~/.cache/ftrain-k8s)
#
# Idempotent: a second run with the binary cached only checks the apt packages (seconds).
# Needs root (or sudo) for apt-get. Exit status is non-zero with a message on any failure.
set -euo pipefail

# Everything runs inside main() so bash has parsed the whole file before it starts: editing or
# updating this script while a (long) build runs cannot break the running copy.
main() {

    CACHE_DIR="${FTRAIN_K8S_CACHE:-${HOME}/.cache/ftrain-k8s}"
    BIN="${CACHE_DIR}/kube-apiserver"
    WANT_VERSION="v1.20.2"
    APT_PACKAGES=(etcd-server golang-go rsync jq golang-github-modern-go-reflect2-dev openssl dpkg-dev)

    log() { printf '[setup_apiserver] %s\n' "$*" >&2; }
    die() { printf '[setup_apiserver] ERROR: %s\n' "$*" >&2; exit 1; }

    SUDO=""
    if [ "$(id -u)" != "0" ]; then
        if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
            NEED_ROOT=1
        fi
    fi

    # ---------------------------------------------------------------- 1. apt packages
    missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        [ -z "${NEED_ROOT:-}" ] || die "need root or sudo to apt-get install: ${missing[*]}"
        log "installing apt packages: ${missing[*]}"
        $SUDO apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" \
            || die "apt-get install ${missing[*]} failed"
    else
        log "apt packages present: ${APT_PACKAGES[*]}"
    fi
    for tool in etcd go make rsync openssl; do
        command -v "$tool" >/dev/null 2>&1 || die "'$tool' not on PATH after installing packages"
    done

    # ---------------------------------------------------------------- cached binary?
    if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "$WANT_VERSION"; then
        log "cached: $BIN ($("$BIN" --version))"
        echo "$BIN"
        exit 0
    fi

    mkdir -p "$CACHE_DIR" || die "cannot create cache dir $CACHE_DIR"
    WORK="${CACHE_DIR}/build"
    mkdir -p "$WORK"
    start_ts=$(date +%s)

    # ---------------------------------------------------------------- 2. source package
    SRC_DIR="$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-1.20*' 2>/dev/null | head -n1 || true)"
    if [ -z "$SRC_DIR" ]; then
        APT_PRIV="${WORK}/apt"
        mkdir -p "$APT_PRIV/lists/partial" "$APT_PRIV/archives/partial" "$APT_PRIV/sources.list.d"
        # Same mirror as the system's bookworm main entry.
        MIRROR="$( { grep -hE '^[[:space:]]*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}';
                     grep -hE '^[[:space:]]*deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
                       | sed -E 's/\[[^]]*\]//' | awk '{print $2}'; } \
                   | grep -E '^https?://' | grep -E '/debian/?$' | head -n1 || true)"
        [ -n "$MIRROR" ] || die "no Debian mirror (URI ending in /debian) in /etc/apt/sources.list{,.d/}; add bookworm main"
        MIRROR="${MIRROR%/}"
        KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
        if [ -r "$KEYRING" ]; then
            echo "deb-src [signed-by=${KEYRING}] ${MIRROR} bookworm main" > "$APT_PRIV/sources.list"
        else
            echo "deb-src ${MIRROR} bookworm main" > "$APT_PRIV/sources.list"
        fi
        log "fetching Debian bookworm 'kubernetes' source package from ${MIRROR} (private deb-src list)"
        APT_OPTS=(-o "Dir::Etc::SourceList=${APT_PRIV}/sources.list"
                  -o "Dir::Etc::SourceParts=${APT_PRIV}/sources.list.d"
                  -o "Dir::State::Lists=${APT_PRIV}/lists"
                  -o "Dir::Cache::Archives=${APT_PRIV}/archives"
                  -o "APT::Get::List-Cleanup=0"
                  -o "APT::Sandbox::User=root")
        $SUDO apt-get "${APT_OPTS[@]}" update -qq || die "apt-get update with the private deb-src list failed"
        ( cd "$WORK" && $SUDO apt-get "${APT_OPTS[@]}" source --download-only kubernetes ) \
            || die "apt-get source --download-only kubernetes failed"
        dsc="$(ls "$WORK"/kubernetes_1.20*.dsc 2>/dev/null | head -n1 || true)"
        [ -n "$dsc" ] || die "no kubernetes_1.20*.dsc downloaded into $WORK"
        log "unpacking $(basename "$dsc")"
        ( cd "$WORK" && dpkg-source --no-check -x "$(basename "$dsc")" >/dev/null ) || die "dpkg-source -x failed"
        SRC_DIR="$(find "$WORK" -maxdepth 1 -type d -name 'kubernetes-1.20*' | head -n1)"
        [ -n "$SRC_DIR" ] || die "unpacked source tree not found under $WORK"
    else
        log "using already unpacked source tree $SRC_DIR"
    fi

    # ---------------------------------------------------------------- 3. reflect2
    DEB_REFLECT2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -d "$DEB_REFLECT2" ] || die "$DEB_REFLECT2 missing (golang-github-modern-go-reflect2-dev)"
    log "replacing vendor/github.com/modern-go/reflect2 by Debian's copy"
    rsync -a --delete "$DEB_REFLECT2/" "$SRC_DIR/vendor/github.com/modern-go/reflect2/" || die "rsync reflect2 failed"

    # ---------------------------------------------------------------- 4. build
    log "building cmd/kube-apiserver with $(go version) (takes ~6 min on 2 cores; log: $WORK/build.log)"
    (
        cd "$SRC_DIR"
        export GOPROXY=off KUBE_GIT_VERSION="$WANT_VERSION" KUBE_GIT_TREE_STATE=clean
        make WHAT=cmd/kube-apiserver
    ) > "$WORK/build.log" 2>&1 || { tail -n 40 "$WORK/build.log" >&2; die "kube-apiserver build failed (see $WORK/build.log)"; }

    built="$(find "$SRC_DIR/_output" -type f -name kube-apiserver -perm -u+x 2>/dev/null | head -n1 || true)"
    [ -n "$built" ] || die "build finished but no kube-apiserver binary under $SRC_DIR/_output"
    cp "$built" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
    "$BIN" --version | grep -q "$WANT_VERSION" || die "built binary does not report $WANT_VERSION"
    log "built $BIN ($("$BIN" --version)) in $(( $(date +%s) - start_ts )) s"
    if [ -z "${FTRAIN_K8S_KEEP_BUILD:-}" ]; then
        log "removing build tree (set FTRAIN_K8S_KEEP_BUILD=1 to keep it)"
        rm -rf "$WORK"
    fi
    echo "$BIN"
}

main "$@"
exit $?
