#!/bin/sh
# The emqx image's entrypoint, the subset manifests/brokers/emqx uses: EMQX reads every EMQX_*
# variable itself (EMQX_NODE__NAME -> node.name, ...); this script only fills in what the
# official one defaults, then runs the command (bin/emqx foreground: PID 1, logs on stdout):
#   EMQX_NODE__NAME   default emqx@<pod IP>
#   EMQX_LOG__CONSOLE__ENABLE / EMQX_LOG__FILE__DEFAULT__ENABLE   default console on, file off
# Cluster discovery: with EMQX_CLUSTER__DISCOVERY_STRATEGY=dns EMQX looks up
# EMQX_CLUSTER__DNS__NAME itself; where that name does not resolve (no cluster DNS) it finds no
# peer and the node runs standalone, which this script says at start.
set -eu
log() { echo "docker-entrypoint.sh: $*"; }

if [ -z "${EMQX_NODE__NAME:-}" ]; then
    EMQX_NODE__NAME="emqx@$(hostname -i | awk '{print $1}')"
    export EMQX_NODE__NAME
fi
export EMQX_LOG__CONSOLE__ENABLE="${EMQX_LOG__CONSOLE__ENABLE:-true}"
export EMQX_LOG__FILE__DEFAULT__ENABLE="${EMQX_LOG__FILE__DEFAULT__ENABLE:-false}"
if [ "${EMQX_CLUSTER__DISCOVERY_STRATEGY:-manual}" = dns ] \
        && ! getent hosts "${EMQX_CLUSTER__DNS__NAME:-}" > /dev/null; then
    log "cluster discovery: ${EMQX_CLUSTER__DNS__NAME:-(no name)} does not resolve (no cluster" \
        "DNS?): this node finds no peer and runs standalone until a lookup succeeds"
fi
log "node $EMQX_NODE__NAME"
exec "$@"
