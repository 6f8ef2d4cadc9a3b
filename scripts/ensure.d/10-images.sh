# Sourced by ensure_all (scripts/lib.sh): the container images tests/test_real_node.py runs
# (a Debian base made with mmdebstrap, containers/*.Containerfile, the mosquitto broker image,
# the pause image) and the templates' toolchain images (plugin-templates/*/toolchain.Containerfile,
# tests/test_toolchains.py), built with podman into $PLUGFORGE_CACHE/images, each keyed by its inputs
# (testbed/images.py). In the background: these builds wait mostly on Debian's archive and
# dpkg, beside the CPU-bound Go builds. Cold: about 6-9 minutes (the toolchains ~2 of them);
# cached: seconds.

[ "$PURPOSE" = test ] || return 0  # only the tests use it

ensure_images() {
    step "Container images for the real node and the build toolchains"
    "$VENV/bin/python" -m testbed.images || die "building the images failed (see above)"
}

in_background images ensure_images
