# Sourced by ensure_all (scripts/lib.sh): EMQX 5.8.9 for the testbed, built once per machine from
# ../shared/brokers/emqx (source tarball + build.sh, offline, Debian's OTP 25) into
# $PLUGFORGE_CACHE/emqx/<version>-<sha256 of tarball and build.sh>. Cold: about 4-5 minutes on 2
# cores; cached: a file check. The tests build it themselves if this hook did not run.

ensure_emqx() {
    if [ ! -f "$ROOT/../shared/brokers/emqx/build.sh" ]; then
        info "no ../shared/brokers/emqx here: the EMQX tests will say so"
        return 0
    fi
    step "EMQX 5.8.9 for the testbed (the first run builds it: 4-5 minutes on 2 cores)"
    PLUGFORGE_CACHE="$CACHE_DIR" "$VENV/bin/python" -m testbed.emqx \
        || die "building EMQX failed (see above)"
}

in_background emqx ensure_emqx
