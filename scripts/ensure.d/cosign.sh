# Sourced by ensure_all (scripts/lib.sh): sigstore's cosign, the reference client for image
# signatures and attestations. Only the interop tests (tests/test_signing_cosign.py) run it: the
# product signs and verifies in Python (plugforge/signing/). Taken from Debian trixie's package,
# pinned by version and hash and checked along the archive's own chain (InRelease signed by a key
# of the host's debian-archive-keyring -> Packages.xz -> the .deb): a few seconds. If the archive
# no longer carries that version, built with `go install` at a pinned tag instead (about 5
# minutes on 2 cores). Without either, those tests are skipped and say why.

[ "$PURPOSE" = test ] || return 0  # only the tests use it

COSIGN_DEB_VERSION=2.5.0-2+b5
COSIGN_DEB_SHA256=3b6eadd27f3c4c00bfa7eab5c2397a6a15a763630c7a1d40d06ff60d24799eef
COSIGN_GO_VERSION=v2.6.5
DEBIAN_MIRROR=http://deb.debian.org/debian

cosign_from_debian() {  # cosign_from_debian DIR: DIR/cosign from trixie's package
    local dir=$1 tmp rc
    tmp=$(mktemp -d)
    (
        set -euo pipefail
        cd "$tmp"
        curl -fsS --retry 3 -o InRelease "$DEBIAN_MIRROR/dists/trixie/InRelease"
        gpgv --keyring /usr/share/keyrings/debian-archive-keyring.gpg InRelease 2>/dev/null
        local index
        index=$(awk '/^SHA256:/ {s = 1; next} /^[^ ]/ {s = 0}
                     s && $3 == "main/binary-amd64/Packages.xz" {print $1}' InRelease)
        curl -fsS --retry 3 -o Packages.xz "$DEBIAN_MIRROR/dists/trixie/main/binary-amd64/Packages.xz"
        echo "$index  Packages.xz" | sha256sum --check --quiet
        local file
        file=$(xz -dc Packages.xz | awk -v v="$COSIGN_DEB_VERSION" -v h="$COSIGN_DEB_SHA256" '
            /^Package: / {p = ($2 == "cosign"); ok = 0}
            p && /^Version: / {ok = ($2 == v)}
            p && ok && /^Filename: / {f = $2}
            p && ok && /^SHA256: / && $2 == h {print f; exit}')
        [ -n "$file" ] || { echo "trixie carries no cosign $COSIGN_DEB_VERSION with the pinned hash" >&2; exit 1; }
        curl -fsS --retry 3 -o cosign.deb "$DEBIAN_MIRROR/$file"
        echo "$COSIGN_DEB_SHA256  cosign.deb" | sha256sum --check --quiet
        dpkg-deb -x cosign.deb root
        mkdir -p "$dir"
        install -m 0755 root/usr/bin/cosign "$dir/cosign.partial"
        mv "$dir/cosign.partial" "$dir/cosign"
    )
    rc=$?
    rm -rf "$tmp"
    return $rc
}

cosign_from_source() {  # cosign_from_source DIR: DIR/cosign built with go install
    GOBIN="$1" GOFLAGS=-mod=mod go install -trimpath -ldflags=-s \
        "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_GO_VERSION"
}

ensure_cosign() {
    local deb="$CACHE_DIR/cosign/deb-$COSIGN_DEB_VERSION" src="$CACHE_DIR/go-bin/cosign-$COSIGN_GO_VERSION"
    local started=$SECONDS bin
    for bin in "$deb" "$src"; do
        if [ -x "$bin/cosign" ]; then
            info "cosign cached ($bin)"
            export PLUGFORGE_COSIGN="$bin/cosign"
            return 0
        fi
    done
    step "Installing cosign $COSIGN_DEB_VERSION from Debian trixie's archive (first run only)"
    if cosign_from_debian "$deb"; then
        info "installed in $((SECONDS - started))s: $deb/cosign"
        export PLUGFORGE_COSIGN="$deb/cosign"
        return 0
    fi
    step "Building cosign $COSIGN_GO_VERSION with go install instead (about 5 minutes on 2 cores)"
    mkdir -p "$src"
    if cosign_from_source "$src"; then
        info "installed in $((SECONDS - started))s: $src/cosign"
        export PLUGFORGE_COSIGN="$src/cosign"
    else
        info "go install failed (see above); the cosign interop tests are skipped"
    fi
}

ensure_cosign
