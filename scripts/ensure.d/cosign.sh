# Sourced by ensure_all (scripts/lib.sh): sigstore's cosign, the reference client for image
# signatures and attestations. Only the interop tests (tests/test_signing_cosign.py) run it: the
# product signs and verifies in Python (plugforge/signing/). Built once with `go install` through
# the Go module proxy at a pinned tag into $PLUGFORGE_CACHE (about 5 minutes on 2 cores, module
# downloads included). Without it those tests are skipped and say why.

[ "$PURPOSE" = test ] || return 0  # only the tests use it

COSIGN_VERSION=v2.6.5

ensure_cosign() {
    local bin="$CACHE_DIR/go-bin/cosign-$COSIGN_VERSION"
    if [ -x "$bin/cosign" ]; then
        info "cosign $COSIGN_VERSION cached ($bin)"
    else
        step "Installing cosign $COSIGN_VERSION with go install (first run only; about 5 minutes on 2 cores)"
        mkdir -p "$bin"
        local started=$SECONDS
        if GOBIN="$bin" GOFLAGS=-mod=mod go install -trimpath -ldflags=-s \
                "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION"; then
            info "installed in $((SECONDS - started))s: $bin/cosign"
        else
            info "go install failed (see above); the cosign interop tests are skipped"
            return 0
        fi
    fi
    export PLUGFORGE_COSIGN="$bin/cosign"
}

ensure_cosign
