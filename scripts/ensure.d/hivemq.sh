# Sourced by ensure_all (scripts/lib.sh): HiveMQ CE for the testbed and the Maven plugins the
# hivemq-java template needs, fetched once into $PLUGFORGE_CACHE so tests and CI warm runs
# never download. Idempotent: each part is skipped when its stamp matches.

ensure_hivemq() {
    local repo="$CACHE_DIR/build-caches/maven" stamp key started
    command -v mvn >/dev/null || die "mvn not found; the Debian package maven is in scripts/apt-packages.txt"
    mkdir -p "$repo"

    step "HiveMQ CE for the testbed (the first run downloads ~100 MB from Maven Central)"
    "$VENV/bin/python" -m testbed.hivemq || die "fetching HiveMQ CE failed (see above)"

    # Build the starter once so its Maven plugins and the extension SDK are in the repository.
    local starter="$ROOT/plugin-templates/hivemq-java/starter"
    key=$(cat "$starter/pom.xml" | sha256sum | cut -c1-16)
    stamp="$CACHE_DIR/hivemq/template-warm-$key"
    if [ -e "$stamp" ]; then
        info "hivemq-java template dependencies cached ($repo)"
        return
    fi
    step "Pre-fetching the hivemq-java template's Maven plugins into $repo"
    local tmp
    tmp=$(mktemp -d)
    cp -r "$starter/." "$tmp/"
    started=$SECONDS
    (cd "$tmp" && mvn -B --no-transfer-progress -Dstyle.color=never -Dmaven.repo.local="$repo" \
        package) || { rm -rf "$tmp"; die "building the hivemq-java starter failed (see above)"; }
    rm -rf "$tmp"
    mkdir -p "$(dirname "$stamp")" && touch "$stamp"
    info "done in $((SECONDS - started))s"
}

ensure_hivemq
