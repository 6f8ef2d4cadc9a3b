# Sourced by ensure_all (scripts/lib.sh): kubelet, kube-controller-manager and kube-scheduler
# (one binary, tests/kube-node) for the real node of tests/test_real_node.py, built once per
# input into $PLUGFORGE_CACHE. It uses the same Go build cache as the apiserver harness, so most
# of k8s.io/kubernetes is compiled once for both: about 8 minutes cold on 2 cores after the
# harness, seconds when cached.

[ "$PURPOSE" = test ] || return 0  # only the tests use it

KUBE_NODE_VERSION=v1.33.13

ensure_kube_node() {
    local src="$ROOT/tests/kube-node" key out started
    key=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)
    out="$CACHE_DIR/kube-node/$key/kube-node"
    if [ ! -x "$out" ]; then
        step "Building kubelet + kube-controller-manager + kube-scheduler $KUBE_NODE_VERSION (first run only; about 8 minutes on 2 cores)"
        mkdir -p "$(dirname "$out")"
        started=$SECONDS
        # Without the version stamp the node reports v0.0.0-master.
        local pkg=k8s.io/component-base/version minor=${KUBE_NODE_VERSION#v1.}
        (cd "$src" && GOFLAGS=-mod=readonly go build -trimpath -o "$out.tmp" -ldflags="-s \
            -X $pkg.gitVersion=$KUBE_NODE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=${minor%%.*} \
            -X $pkg.gitTreeState=clean" .) \
            || die "building the kube-node binary failed (see the Go output above)"
        mv "$out.tmp" "$out"
        info "built in $((SECONDS - started))s: $out"
    else
        info "kubelet + controller-manager + scheduler cached: $out"
    fi
    export PLUGFORGE_KUBE_NODE=$out
}

ensure_kube_node
