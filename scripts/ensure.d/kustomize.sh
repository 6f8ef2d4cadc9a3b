# Sourced by ensure_all (scripts/lib.sh): kustomize, for tests/test_manifests.py and the demo
# (`kustomize build` of manifests/ and its overlays). Built once with `go install` through the
# Go module proxy at a pinned tag into $PLUGFORGE_CACHE. Without it the tests fall back to
# testbed/manifests.py's renderer of the Kustomize subset our kustomizations use.

KUSTOMIZE_VERSION=v5.5.0

ensure_kustomize() {
    local bin="$CACHE_DIR/go-bin/kustomize-$KUSTOMIZE_VERSION"
    if [ -x "$bin/kustomize" ]; then
        info "kustomize $KUSTOMIZE_VERSION cached ($bin)"
    else
        step "Installing kustomize $KUSTOMIZE_VERSION with go install (about a minute on 2 cores)"
        mkdir -p "$bin"
        if GOBIN="$bin" GOFLAGS=-mod=mod go install \
                "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"; then
            info "installed: $bin/kustomize"
        else
            info "go install failed (see above); tests render the manifests with testbed/manifests.py"
            return 0
        fi
    fi
    export PLUGFORGE_KUSTOMIZE="$bin/kustomize"
}

ensure_kustomize
