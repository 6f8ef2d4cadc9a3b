#!/bin/sh
# start_vernemq: renders /vernemq/etc/vernemq.conf from the environment and runs the node in the
# foreground (PID 1, logs on stdout). The subset of the vernemq/vernemq image's conventions that
# manifests/brokers/vernemq uses:
#   DOCKER_VERNEMQ_<KEY>=value   a vernemq.conf line: <KEY> lower-cased, "__" -> "."
#                                (DOCKER_VERNEMQ_LISTENER__HTTP__DEFAULT -> listener.http.default)
#   DOCKER_VERNEMQ_USER_<name>=password   an entry of vmq_passwd's file (hashed here)
#   DOCKER_VERNEMQ_NODENAME      the node's name; default VerneMQ@<the pod's FQDN from
#                                /etc/hosts, as the kubelet writes it for a StatefulSet pod> or
#                                VerneMQ@<pod IP>
#   DOCKER_VERNEMQ_DISTRIBUTED_COOKIE   the Erlang cookie; without it a random one (this node
#                                then cannot join or be joined by others)
#   DOCKER_VERNEMQ_ACCEPT_EULA   accepted and ignored: this release is built from source
#   DOCKER_VERNEMQ_DISCOVERY_KUBERNETES, DOCKER_VERNEMQ_KUBERNETES_*: see below
# MQTT listens on 0.0.0.0:1883 (the pod IP for clients, loopback for the sidecar's probes).
set -eu
ROOT=/vernemq
log() { echo "start_vernemq: $*"; }
fail() { echo "start_vernemq: error: $*" >&2; exit 1; }

ip=$(hostname -i | awk '{print $1}')
host=$ip
fqdn=$(hostname -f 2>/dev/null || true)
case $fqdn in
    *.) ;;  # a kubelet without a cluster domain writes "<pod>.<service>.<namespace>.svc."
    *.*) host=$fqdn ;;
esac

if [ "${DOCKER_VERNEMQ_DISCOVERY_KUBERNETES:-0}" = 1 ]; then
    # The official image lists the pods matching DOCKER_VERNEMQ_KUBERNETES_LABEL_SELECTOR and
    # joins the first by its DNS name (<pod>.<service>.<namespace>.svc...): that needs cluster
    # DNS, and this image does not implement the lookup. Each node starts on its own.
    log "Kubernetes discovery (selector ${DOCKER_VERNEMQ_KUBERNETES_LABEL_SELECTOR:-none}) is not" \
        "implemented by this image: this node starts standalone; join it to a peer with" \
        "'vmq-admin cluster join discovery-node=VerneMQ@<peer host>'"
fi

overrides=$(mktemp)
users=$(mktemp)
trap 'rm -f "$overrides" "$users"' EXIT
{
    echo "nodename = ${DOCKER_VERNEMQ_NODENAME:-VerneMQ@$host}"
    echo "listener.tcp.default = 0.0.0.0:1883"
    echo "log.console = console"
} > "$overrides"
if [ -z "${DOCKER_VERNEMQ_DISTRIBUTED_COOKIE:-}" ]; then
    log "no DOCKER_VERNEMQ_DISTRIBUTED_COOKIE: using a random cookie (no clustering)"
    echo "distributed_cookie = $(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" >> "$overrides"
fi
# Every DOCKER_VERNEMQ_ variable, by name (values are read through the environment, never
# evaluated).
for name in $(env | sed -n 's/^\(DOCKER_VERNEMQ_[A-Za-z0-9_]*\)=.*/\1/p'); do
    value=$(printenv "$name")
    case $value in *"
"*) fail "$name: a value must be one line" ;; esac
    case $name in
        DOCKER_VERNEMQ_ACCEPT_EULA|DOCKER_VERNEMQ_DISCOVERY_*|DOCKER_VERNEMQ_KUBERNETES_*) ;;
        DOCKER_VERNEMQ_USER_*)
            user=${name#DOCKER_VERNEMQ_USER_}
            case $value in *:*) fail "$name: a password cannot hold ':'" ;; esac
            printf '%s:%s\n' "$user" "$value" >> "$users" ;;
        *)
            key=$(echo "${name#DOCKER_VERNEMQ_}" | tr 'A-Z' 'a-z' | sed 's/__/./g')
            printf '%s = %s\n' "$key" "$value" >> "$overrides" ;;
    esac
done
# The shipped file minus every key set here (and its example listener), then ours; a key set
# twice keeps its last value.
awk -F'=' 'NR == FNR { sub(/[ \t]+$/, "", $1); set[$1] = 1; next }
           { k = $1; sub(/[ \t]+$/, "", k) }
           !(k in set) && k !~ /^listener\.tcp\.name/' \
    "$overrides" "$ROOT/etc/vernemq.conf.dist" > "$ROOT/etc/vernemq.conf.new"
cat "$overrides" >> "$ROOT/etc/vernemq.conf.new"
mv "$ROOT/etc/vernemq.conf.new" "$ROOT/etc/vernemq.conf"

# vmq_passwd's file, rewritten at every start from the variables (plain entries hashed in place).
cp "$users" "$ROOT/etc/vmq.passwd"
if [ -s "$ROOT/etc/vmq.passwd" ]; then
    vmq-passwd -U "$ROOT/etc/vmq.passwd"
    log "vmq_passwd: $(wc -l < "$ROOT/etc/vmq.passwd") user(s) from DOCKER_VERNEMQ_USER_*"
fi
log "node ${DOCKER_VERNEMQ_NODENAME:-VerneMQ@$host}"
# -noinput: no shell on stdin; the VM handles SIGTERM as a clean stop.
export ERL_FLAGS="-noinput ${ERL_FLAGS:-}"
exec "$ROOT/bin/vernemq" console
