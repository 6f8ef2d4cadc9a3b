# Shared by scripts/demo and scripts/test: install what plugforge needs, idempotently,
# saying what happens. Source it; do not run it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE_DIR=${PLUGFORGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/plugforge}
VENV=${PLUGFORGE_VENV:-$ROOT/.venv}
GO_MIN=1.24
export PLUGFORGE_CACHE=$CACHE_DIR
mkdir -p "$CACHE_DIR"

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
info() { printf '    %s\n' "$*"; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages, one per line, comments allowed.
ensure_apt_packages() {
    local wanted missing=()
    wanted=$(sed -e 's/#.*//' -e '/^\s*$/d' "$ROOT/scripts/apt-packages.txt")
    for pkg in $wanted; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        info "Debian packages: all $(echo "$wanted" | wc -w) present"
        return
    fi
    step "Installing Debian packages: ${missing[*]}"
    as_root apt-get update -q
    # Services from these packages are started by our fixtures, never by the system.
    echo exit 101 | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod +x /usr/sbin/policy-rc.d
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
    as_root rm -f /usr/sbin/policy-rc.d
}

version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" = "$2" ]; }

# A Go toolchain >= GO_MIN. Debian's golang-go is too old; Go toolchains are published as
# modules on the Go module proxy, so fetch one from there when none fits.
ensure_go() {
    local have=""
    if command -v go >/dev/null; then have=$(go env GOVERSION | sed 's/^go//'); fi
    if [ -n "$have" ] && version_ge "$have" "$GO_MIN"; then
        info "Go $have"
        return
    fi
    local ver=1.24.11 dir="$CACHE_DIR/go-toolchain"
    if [ ! -x "$dir/go/bin/go" ]; then
        step "Fetching Go $ver from the Go module proxy"
        local zip="$CACHE_DIR/go$ver.zip"
        curl -fSL --progress-bar -o "$zip" \
            "${GOPROXY_URL:-https://proxy.golang.org}/golang.org/toolchain/@v/v0.0.1-go$ver.linux-amd64.zip"
        rm -rf "$dir" && mkdir -p "$dir/go"
        unzip -q "$zip" -d "$dir/unpacked"
        mv "$dir/unpacked/golang.org/toolchain@v0.0.1-go$ver.linux-amd64"/* "$dir/go/"
        rm -rf "$dir/unpacked" "$zip"
        chmod +x "$dir/go/bin/"* "$dir/go/pkg/tool/"*/* 2>/dev/null || true
    fi
    export PATH="$dir/go/bin:$PATH"
    info "Go $(go env GOVERSION) (from $dir)"
}

ensure_venv() {
    local py=${PYTHON:-python3} lock="$ROOT/requirements.lock"
    "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "plugforge needs Python >= 3.11; $py is $("$py" --version 2>&1)"
    [ -f "$lock" ] || die "requirements.lock is missing: run scripts/lock"
    # The virtualenv is exactly the lock: when a pin or hash (or the project's metadata) changes
    # it is made anew, so a package dropped from the lock does not linger.
    local stamp="$VENV/.plugforge-installed" want
    want=$(grep -hv '^\s*#' "$lock" "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        info "virtualenv matches requirements.lock ($want): $VENV"
        export PATH="$VENV/bin:$PATH"
        return
    fi
    step "Installing requirements.lock ($want, $(grep -cE '^[A-Za-z0-9]' "$lock") pins, hash-checked) into $VENV"
    rm -rf "$VENV"
    "$py" -m venv "$VENV" 2>/dev/null || {
        rm -rf "$VENV"
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -q python3-venv
        "$py" -m venv "$VENV"
    }
    # The venv's own pip (not upgraded: that would float) installs only what the lock names,
    # each file checked against its hash; then the project itself, without dependencies.
    "$VENV/bin/pip" install --disable-pip-version-check --progress-bar on --require-hashes -r "$lock"
    "$VENV/bin/pip" install --disable-pip-version-check -q --no-deps --no-build-isolation -e "$ROOT"
    echo "$want" >"$stamp"
    export PATH="$VENV/bin:$PATH"
}

# The kube-apiserver + embedded etcd harness, built once per version into the cache.
ensure_kube_harness() {
    local src="$ROOT/tests/kube-harness" key out
    key=$(cat "$src/go.mod" "$src/go.sum" "$src/main.go" | sha256sum | cut -c1-12)
    out="$CACHE_DIR/kube-harness/$key/kube-harness"
    if [ ! -x "$out" ]; then
        step "Building kube-apiserver + etcd harness (first run only; about 10 minutes on 2 cores)"
        mkdir -p "$(dirname "$out")"
        local started=$SECONDS
        (cd "$src" && GOFLAGS=-mod=readonly go build -trimpath -ldflags=-s -o "$out.tmp" .) \
            || die "building the kube-apiserver harness failed (see the Go output above)"
        mv "$out.tmp" "$out"
        info "built in $((SECONDS - started))s: $out"
    else
        info "kube-apiserver harness cached: $out"
    fi
    export PLUGFORGE_KUBE_HARNESS=$out
}

# Slow builds that Go does not drive (the brokers' rebar3 builds keep about one core busy) run
# beside the Go builds that follow them; ensure_all waits for them at the end. A cold machine
# saves minutes; a warm one pays nothing (each is a cache check).
BACKGROUND=()
in_background() {  # in_background NAME FUNCTION
    local name=$1 fn=$2 log="$CACHE_DIR/logs/$1.log"
    mkdir -p "$CACHE_DIR/logs"
    ("$fn") >"$log" 2>&1 &
    BACKGROUND+=("$name:$!:$SECONDS")
    info "$name: started in the background (log: $log)"
}

wait_background() {
    local entry name pid started log
    for entry in "${BACKGROUND[@]}"; do
        IFS=: read -r name pid started <<<"$entry"
        log="$CACHE_DIR/logs/$name.log"
        [ -n "$pid" ] || continue
        if wait "$pid"; then
            info "$name: ready after $((SECONDS - started))s: $(tail -n 1 "$log" | sed 's/^ *//')"
        else
            tail -n 40 "$log" >&2
            die "$name failed in the background (the end of $log is above)"
        fi
    done
    BACKGROUND=()
}

# ensure_all PURPOSE: "test", "demo" or "bench"; pieces only the tests use (the real node,
# its images, cosign) skip themselves for the others.
ensure_all() {
    PURPOSE=${1:?ensure_all needs a purpose: test, demo or bench}
    step "Checking prerequisites ($PURPOSE)"
    ensure_apt_packages
    ensure_go
    ensure_venv
    # Later pieces (brokers, Go tools, Maven caches) add their own steps there, in file-name
    # order: the ones that build in the background are named first (10-*.sh).
    local hook
    for hook in "$ROOT"/scripts/ensure.d/*.sh; do
        [ -e "$hook" ] || continue
        # shellcheck source=/dev/null
        source "$hook"
    done
    ensure_kube_harness
    wait_background
}
