# Sourced by ensure_all (scripts/lib.sh): VerneMQ 2.0.1 for the testbed, built once per machine
# from ../shared/brokers/vernemq (source tarball + build.sh, offline, Debian's OTP 25) into
# $PLUGFORGE_CACHE/vernemq/<key>, the key a hash of the tarball and build.sh (testbed/vernemq.py).
# Cold: about 4 minutes on 2 cores; cached: a hash of the 17 MB tarball.

ensure_vernemq() {
    step "VerneMQ 2.0.1 for the testbed"
    "$VENV/bin/python" -m testbed.vernemq || die "building VerneMQ failed (see above)"
}

in_background vernemq ensure_vernemq
