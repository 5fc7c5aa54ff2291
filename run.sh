#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine (run as root):
#   ./run.sh          install what is missing, start the server with sample data, run a sample, leave it running
#   ./run.sh test     install what is missing and run the whole test suite (CI runs exactly this),
#                     then the S3 and job end-to-end tests again with the catalog in PostgreSQL
#                     (two pytest processes: tests/conftest.py says which modules share one)
#   ./run.sh test --fast   ruff, mypy and the quick tests (about 2.5 min here): pytest -m
#                     "not e2e and not zfs and not slow and not load" (no real server, no ZFS)
#   ./run.sh stop     stop the server started by ./run.sh
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv
DATA=${MANTA_DATA:-$ROOT/manta-data}
LISTEN=${MANTA_LISTEN:-127.0.0.1:9000}
FAST_MARKERS="not e2e and not zfs and not slow and not load"
PG_E2E=(tests/e2e/test_s3_api.py tests/e2e/test_s3_auth_edges.py tests/e2e/test_s3_edge_keys.py
        tests/e2e/test_s3_listing_acl.py tests/e2e/test_s3_multipart_conditional.py
        tests/e2e/test_s3_ranges_attributes.py tests/e2e/test_s3_cors.py tests/e2e/test_bucket_race.py
        tests/e2e/test_quota.py tests/e2e/test_jobs.py tests/e2e/test_job_limits.py tests/e2e/test_client.py
        tests/e2e/test_s3_object_lock.py tests/e2e/test_s3_lifecycle.py tests/e2e/test_s3_access.py)
APT_PACKAGES=(python3 python3-venv python3-dev gcc awscli curl ca-certificates openssl zfs-fuse bubblewrap libseccomp2 iproute2)
if [ "${1:-start}" = test ]; then
    APT_PACKAGES+=(s3cmd rclone)  # more S3 clients the tests drive unchanged
    APT_PACKAGES+=(chromium)  # the browser CORS test (tests/e2e/test_s3_cors_browser.py)
    APT_PACKAGES+=(postgresql-15 postgresql-client-15)  # the PostgreSQL catalog engine's tests (tests/pgserver.py)
fi

need_apt=()
for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_apt+=("$pkg")
done
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "run.sh: installing ${need_apt[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp=$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)
if [ ! -e "$stamp" ]; then
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e ".[test]"
    touch "$stamp"
fi

start_zfs_fuse() {
    # ZFS tests use file-backed pools on zfs-fuse; its daemon must be running and answering
    [ -x /usr/sbin/zfs-fuse ] || return 0
    /usr/sbin/zpool list >/dev/null 2>&1 && return 0
    # A daemon that does not answer, or the pidfile a killed one left behind (zfs-fuse then
    # refuses to start, exit 1), would block a fresh start: clear both first.
    if pgrep -x zfs-fuse >/dev/null; then
        pkill -x zfs-fuse || true
        for _ in $(seq 50); do pgrep -x zfs-fuse >/dev/null || break; sleep 0.1; done
        pkill -9 -x zfs-fuse || true
    fi
    rm -f /run/zfs-fuse.pid /var/run/zfs-fuse.pid
    /usr/sbin/zfs-fuse --pidfile /run/zfs-fuse.pid || echo "run.sh: could not start zfs-fuse" >&2
    for _ in $(seq 100); do /usr/sbin/zpool list >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "run.sh: zfs-fuse does not answer: $(/usr/sbin/zpool list 2>&1 | head -1)" >&2
}

case "${1:-start}" in
test)
    shift || true
    fast=()
    if [ "${1:-}" = --fast ]; then
        shift
        fast=(-m "$FAST_MARKERS")
    else
        start_zfs_fuse
    fi
    "$VENV/bin/ruff" check manta jobs storage tests benchmarks
    "$VENV/bin/mypy" manta jobs storage
    # two test processes, a module each at a time; the modules that use ZFS or network
    # namespaces run one after another in one of them (tests/conftest.py, xdist_scope)
    parallel=(-n 2 --dist loadfile)
    if [ ${#fast[@]} -eq 0 ] && [ $# -eq 0 ]; then
        "$VENV/bin/python" -m pytest -p no:cacheprovider "${parallel[@]}" --durations=25  # the slowest, to keep CI short
        # the S3 and job end-to-end tests once more, every server's catalog in PostgreSQL
        MANTA_TEST_CATALOG=postgresql exec "$VENV/bin/python" -m pytest -p no:cacheprovider "${parallel[@]}" "${PG_E2E[@]}"
    fi
    [ $# -eq 0 ] || parallel=()  # tests named on the command line run in this one process
    exec "$VENV/bin/python" -m pytest -p no:cacheprovider "${parallel[@]}" "${fast[@]}" "$@"
    ;;
stop)
    if [ -f "$DATA/server.pid" ]; then
        pid=$(cat "$DATA/server.pid")
        kill "$pid" 2>/dev/null || true
        # wait for it to finish stopping (running tasks, node aliases), so that the port is free
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        rm -f "$DATA/server.pid"
    fi
    echo "manta: stopped"
    ;;
start)
    mkdir -p "$DATA"
    if [ -f "$DATA/server.pid" ] && kill -0 "$(cat "$DATA/server.pid")" 2>/dev/null; then
        echo "manta: server already running (pid $(cat "$DATA/server.pid"))"
    else
        nohup "$VENV/bin/manta" serve --data "$DATA" --listen "$LISTEN" >"$DATA/server.log" 2>&1 &
        echo $! >"$DATA/server.pid"
        for _ in $(seq 100); do grep -q "ready in" "$DATA/server.log" 2>/dev/null && break; sleep 0.1; done
        grep -q "ready in" "$DATA/server.log" || { cat "$DATA/server.log"; echo "manta: server did not start" >&2; exit 1; }
    fi
    # root's profile, so that the CLI, manta.Client() and the notebook work from any directory
    root_key() { "$VENV/bin/python" -c 'import json,sys;print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$DATA/root-credentials.json" "$1"; }
    profile_written=$(root_key secret_key | "$VENV/bin/manta" config set --profile default \
        --url "http://$LISTEN" --access-key "$(root_key access_key)" --secret-key -)
    MANTA_DATA=$DATA MANTA_URL="http://$LISTEN" "$VENV/bin/python" examples/sample.py
    cat <<MSG

manta is running at http://$LISTEN (log: $DATA/server.log, stop: ./run.sh stop)
Root credentials: $DATA/root-credentials.json
$profile_written:
the URL and root keys, which manta, manta.Client() and examples/quickstart.ipynb use from any directory
(see them with: manta config show).
The manta CLI:
  . $VENV/bin/activate
  manta ls -l samples/logs/2026/11/29/
  manta find samples/logs/ | manta job create -o -m "grep -c ' ERROR ' || true" -r "awk '{s += \\\$1} END {print s}'"
Or any S3 client, for example:
  export AWS_ACCESS_KEY_ID=\$(python3 -c 'import json;print(json.load(open("$DATA/root-credentials.json"))["access_key"])')
  export AWS_SECRET_ACCESS_KEY=\$(python3 -c 'import json;print(json.load(open("$DATA/root-credentials.json"))["secret_key"])')
  aws --endpoint-url http://$LISTEN s3 ls s3://samples/
MSG
    ;;
*)
    echo "usage: ./run.sh [start|test [--fast] [PYTEST ARGS]|stop]" >&2
    exit 2
    ;;
esac
