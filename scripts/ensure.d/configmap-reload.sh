# Sourced by ensure_all (scripts/lib.sh): the peer that bench/propagation.py and bench/memory.py
# measure plugforge's sidecar against, installed once into $PLUGFORGE_CACHE.
# configmap-reload is installed with `go install` through the Go module proxy at a pinned tag.
# Where the proxy refuses that module (this workplace's proxy answers 403 for it), the
# benchmarks fall back to bench/reload_peer (built by bench/go_programs.py): the same documented
# behaviour (fsnotify on the directory, webhook on the ..data swap, Prometheus metrics) built
# from modules the proxy serves; the table then names the fallback, never the peer.

CONFIGMAP_RELOAD_VERSION=v0.15.0

ensure_configmap_reload() {
    local bin="$CACHE_DIR/go-bin/configmap-reload-$CONFIGMAP_RELOAD_VERSION"
    export PLUGFORGE_CONFIGMAP_RELOAD="$bin/configmap-reload"
    if [ -x "$bin/configmap-reload" ]; then
        info "configmap-reload $CONFIGMAP_RELOAD_VERSION cached ($bin)"
    elif [ -e "$bin.refused" ]; then
        info "configmap-reload $CONFIGMAP_RELOAD_VERSION: the module proxy refused it earlier (rm $bin.refused to retry)"
    else
        step "Installing configmap-reload $CONFIGMAP_RELOAD_VERSION (the benchmarks' peer) with go install"
        mkdir -p "$bin"
        if GOBIN="$bin" GOFLAGS=-mod=mod go install \
                "github.com/jimmidyson/configmap-reload@$CONFIGMAP_RELOAD_VERSION"; then
            info "installed: $bin/configmap-reload"
        else
            touch "$bin.refused"
            info "go install failed (see above); the benchmarks use bench/reload_peer instead"
        fi
    fi
}

ensure_configmap_reload
