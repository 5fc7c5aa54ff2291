#!/usr/bin/env bash
# A local manta cluster on one machine, each storage node in its own network namespace (run as root):
#   scripts/cluster.sh up [N]   start N `manta node`s (default 3) and a front door on 127.0.0.1:9000 (or MANTA_LISTEN)
#   scripts/cluster.sh down     stop them and remove the namespaces, veths and the bridge (the data stays)
# Everything lives in ./manta-cluster/ (MANTA_CLUSTER_DIR): node-I/ (a node's data), front/ (the
# front door's catalog and root credentials), secret (the cluster secret, 0600), *.log, *.pid.
# Nodes sit on the bridge manta-br (10.213.0.1/24) at 10.213.0.2, .3, ... port 9100, with no
# route anywhere else; the front door in the root namespace reaches them over the bridge.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${MANTA_PYTHON:-$ROOT/.venv/bin/python}  # MANTA_PYTHON: another interpreter with manta installed
DIR=${MANTA_CLUSTER_DIR:-$ROOT/manta-cluster}
LISTEN=${MANTA_LISTEN:-127.0.0.1:9000}
BRIDGE=manta-br
SUBNET=10.213.0
NODE_PORT=9100

die() { echo "cluster.sh: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root: it creates network namespaces, veth pairs and a bridge (sudo $0 $*)"
for tool in ip nsenter curl; do
    command -v "$tool" >/dev/null || die "$tool is not installed (apt-get install iproute2 util-linux curl)"
done

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop_pid() {  # pidfile: SIGTERM, wait up to 10 s, then SIGKILL
    local pidfile=$1 pid
    [ -f "$pidfile" ] || return 0
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 -- "-$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
}

wait_http() {  # url seconds what name: until any HTTP answer (a node answers 403 to unsigned requests)
    local url=$1 seconds=$2 what=$3 name=$4
    for _ in $(seq $((seconds * 10))); do
        [ "$(curl -s -o /dev/null -m 1 -w '%{http_code}' "$url" || true)" != 000 ] && return 0
        alive "$DIR/$name.pid" || break
        sleep 0.1
    done
    tail -n 20 "$DIR/$name.log" >&2
    die "$what did not answer at $url (log: $DIR/$name.log; scripts/cluster.sh down cleans up)"
}

up() {
    local n=${1:-3}
    [[ $n =~ ^[1-9][0-9]?$ ]] && [ "$n" -le 200 ] || die "N must be a number from 1 to 200"
    [ -x "$PYTHON" ] || die "no $PYTHON: run ./run.sh once first (it makes the venv)"
    alive "$DIR/front.pid" && die "already up (front door pid $(cat "$DIR/front.pid")); scripts/cluster.sh down first"
    mkdir -p "$DIR"
    chmod 711 "$DIR"  # the task sandbox user binds blob files by path
    if [ ! -s "$DIR/secret" ]; then
        (umask 077; od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$DIR/secret")
    fi
    chmod 600 "$DIR/secret"
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link add "$BRIDGE" type bridge forward_delay 0
        ip addr add "$SUBNET.1/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    local nodes=() i ns veth addr
    for i in $(seq 0 $((n - 1))); do
        ns=manta-node$i veth=manta-v$i addr=$SUBNET.$((i + 2))
        if ! ip netns list | grep -qw "$ns"; then
            ip netns add "$ns"
            ip link add "$veth" type veth peer name eth0 netns "$ns"
            ip link set "$veth" master "$BRIDGE" up
            ip netns exec "$ns" ip link set lo up
            ip netns exec "$ns" ip addr add "$addr/24" dev eth0
            ip netns exec "$ns" ip link set eth0 up
        fi
        mkdir -p "$DIR/node-$i"
        # nsenter --net: the node's network namespace only, not a private mount namespace
        # (zfs mount/umount must act on the host's mounts)
        setsid nsenter --net="/run/netns/$ns" -- "$PYTHON" -m manta node \
            --storage "dir:$DIR/node-$i/storage" \
            --listen "$addr:$NODE_PORT" --data "$DIR/node-$i" --cluster-secret-file "$DIR/secret" \
            </dev/null >>"$DIR/node-$i.log" 2>&1 &
        echo $! >"$DIR/node-$i.pid"
        nodes+=("http://$addr:$NODE_PORT")
    done
    for i in $(seq 0 $((n - 1))); do
        wait_http "${nodes[$i]}/v1/health" 60 "node $i" "node-$i"
    done
    printf '%s\n' "${nodes[@]}" >"$DIR/nodes"
    local node_args=()
    for url in "${nodes[@]}"; do node_args+=(--node "$url"); done
    setsid "$PYTHON" -m manta serve "${node_args[@]}" --listen "$LISTEN" --data "$DIR/front" \
        --cluster-secret-file "$DIR/secret" </dev/null >>"$DIR/front.log" 2>&1 &
    echo $! >"$DIR/front.pid"
    wait_http "http://$LISTEN/" 60 "the front door" front
    cat <<MSG
manta cluster is up: front door http://$LISTEN (log: $DIR/front.log), $n nodes:
$(for i in $(seq 0 $((n - 1))); do echo "  node $i  ${nodes[$i]}  namespace manta-node$i  veth manta-v$i  log $DIR/node-$i.log"; done)
Cluster secret: $DIR/secret. Root credentials: $DIR/front/root-credentials.json
The manta CLI (it reads those credentials from the front door's data dir):
  . $ROOT/.venv/bin/activate
  export MANTA_DATA=$DIR/front MANTA_URL=http://$LISTEN
  manta mb logs && manta put /etc/services logs/services && manta admin nodes
Or any S3 client:
  export AWS_ACCESS_KEY_ID=\$(python3 -c 'import json;print(json.load(open("$DIR/front/root-credentials.json"))["access_key"])')
  export AWS_SECRET_ACCESS_KEY=\$(python3 -c 'import json;print(json.load(open("$DIR/front/root-credentials.json"))["secret_key"])')
  aws --endpoint-url http://$LISTEN s3 ls
Cut node 1's link and bring it back:   ip link set manta-v1 down;  ip link set manta-v1 up
From node 1's network to node 0:     ip netns exec manta-node1 curl -s ${nodes[0]}/v1/health  (403: requests must be signed)
Stop it all (the data stays in $DIR): scripts/cluster.sh down
MSG
}

down() {
    stop_pid "$DIR/front.pid"
    local pidfile ns link
    for pidfile in "$DIR"/node-*.pid; do
        [ -e "$pidfile" ] && stop_pid "$pidfile"
    done
    for ns in $(ip netns list | awk '$1 ~ /^manta-node[0-9]+$/ {print $1}'); do
        for pid in $(ip netns pids "$ns"); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns"
    done
    for link in $(ip -o link show | awk -F': ' '{sub(/@.*/, "", $2); print $2}' | grep -E '^manta-v[0-9]+$' || true); do
        ip link del "$link" 2>/dev/null || true
    done
    ip link show "$BRIDGE" >/dev/null 2>&1 && ip link del "$BRIDGE"
    echo "manta cluster: stopped; namespaces, veths and bridge removed (data kept in $DIR)"
}

case "${1:-}" in
up) shift; up "$@" ;;
down) down ;;
*) echo "usage: scripts/cluster.sh up [N] | down" >&2; exit 2 ;;
esac
