# Sourced by ensure_all (scripts/lib.sh): container images, built with podman into
# $PLUGFORGE_CACHE/images, each keyed by its inputs (testbed/images.py). In the background: these
# builds wait mostly on Debian's archive and dpkg, beside the CPU-bound Go builds.
# - demo: the Debian base (mmdebstrap) and the templates' toolchain images
#   (plugin-templates/*/toolchain.Containerfile) the demo's builds run in (the container
#   executor). Cold: about 3-4 minutes; cached: seconds.
# - test: those, and what tests/test_real_node.py runs (containers/*.Containerfile, the broker
#   images, the pause image). Cold: about 6-9 minutes.

ensure_toolchain_images() {
    step "Container images the builds run in (one toolchain per template)"
    "$VENV/bin/python" -m testbed.toolchains || die "building the toolchain images failed (see above)"
}

ensure_images() {
    step "Container images for the real node and the build toolchains"
    "$VENV/bin/python" -m testbed.images || die "building the images failed (see above)"
}

case "$PURPOSE" in
    test) in_background images ensure_images ;;
    demo) in_background images ensure_toolchain_images ;;
esac
