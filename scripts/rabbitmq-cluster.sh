#!/usr/bin/env bash
# A 3-node RabbitMQ cluster on loopback, for `make cluster`, the cluster tests and CI.
#
#   scripts/rabbitmq-cluster.sh start        start rmq1..3@localhost and cluster them (a no-op when already up)
#   scripts/rabbitmq-cluster.sh stop         stop the three nodes (their data stays until the next start)
#   scripts/rabbitmq-cluster.sh status       ports, pids and the cluster's view of itself; exit 1 unless all is up
#   scripts/rabbitmq-cluster.sh url          print the three-node URL (amqp://guest:guest@127.0.0.1:5701,...)
#   scripts/rabbitmq-cluster.sh kill N       kill -9 node N (1-3): a crash, no goodbye to the cluster
#   scripts/rabbitmq-cluster.sh stop N       stop node N gracefully (its queues' leadership moves first)
#   scripts/rabbitmq-cluster.sh start N      start node N again; it rejoins with its data
#   scripts/rabbitmq-cluster.sh restart N    stop N (if it runs), start it, wait until it accepts AMQP
#
# Node N is rmqN@localhost, AMQP on 127.0.0.1:570N, Erlang distribution on 2570N; epmd is the machine's (4369,
# loopback). The nodes share the rabbitmq user's Erlang cookie, load no plugin (no management UI) and keep data
# and logs under $SWARROW_CLUSTER_DIR (default /tmp/swarrow-cluster), owned by the rabbitmq user: `start`
# wipes it, so every fresh cluster starts empty. The single node on 5672 (scripts/rabbitmq.sh) is never touched.
# Every wait is bounded (SWARROW_CLUSTER_TIMEOUT seconds per node, default 90).
set -euo pipefail

BASE=${SWARROW_CLUSTER_DIR:-/tmp/swarrow-cluster}
HOST=127.0.0.1
AMQP_BASE_PORT=5700 # node N listens on AMQP_BASE_PORT + N
DIST_OFFSET=20000   # and on AMQP port + DIST_OFFSET for Erlang distribution
NODES=(1 2 3)
TIMEOUT=${SWARROW_CLUSTER_TIMEOUT:-90}
JOIN_ATTEMPTS=5

log() { printf '[rabbitmq-cluster] %s\n' "$*"; }
die() {
    printf '[rabbitmq-cluster] error: %s\n' "$*" >&2
    exit 1
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n -E "$@"
    else
        die "needs root (or password-less sudo): Debian's rabbitmq wrappers switch to the rabbitmq user"
    fi
}

node_name() { echo "rmq$1@localhost"; }
amqp_port() { echo $((AMQP_BASE_PORT + $1)); }
node_dir() { echo "$BASE/rmq$1"; }

check_n() {
    case "${1:-}" in
        1 | 2 | 3) ;;
        *) die "node number must be 1, 2 or 3 (got '${1:-}')" ;;
    esac
}

port_open() {
    # bash's /dev/tcp in a subshell, so the descriptor closes at once.
    (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

node_env() {
    # The environment one node runs under. Debian's /usr/sbin wrappers `su` to rabbitmq and keep RABBITMQ_*.
    # The Erlang argument is a single string: never let the shell brace-expand {127,0,0,1}.
    local n=$1 dir
    dir=$(node_dir "$n")
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(node_name "$n")
    export RABBITMQ_NODE_IP_ADDRESS=$HOST
    export RABBITMQ_NODE_PORT
    RABBITMQ_NODE_PORT=$(amqp_port "$n")
    export RABBITMQ_DIST_PORT=$((RABBITMQ_NODE_PORT + DIST_OFFSET))
    export ERL_EPMD_ADDRESS=$HOST
    export RABBITMQ_MNESIA_BASE=$dir/mnesia
    export RABBITMQ_LOG_BASE=$dir/log
    export RABBITMQ_PID_FILE=$dir/pid
    export RABBITMQ_ENABLED_PLUGINS_FILE=$dir/enabled_plugins
    export RABBITMQ_CONFIG_FILE=$dir/rabbitmq
    # Loopback distribution; schedulers that do not spin while idle (the CPU is shared with the workers).
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1} +sbwt none +sbwtdcpu none +sbwtdio none'
}

ctl() {
    # rabbitmqctl against node $2 with a bound of $1 seconds.
    local seconds=$1 n=$2
    shift 2
    as_root timeout "$seconds" rabbitmqctl -q -n "$(node_name "$n")" "$@"
}

node_pid() {
    local pidfile
    pidfile="$(node_dir "$1")/pid"
    if [ -s "$pidfile" ]; then
        local pid
        pid=$(tr -dc '0-9' <"$pidfile")
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            echo "$pid"
            return 0
        fi
    fi
    # No pid file (or a stale one): ask the node itself.
    ctl 20 "$1" eval 'os:getpid().' 2>/dev/null | tr -dc '0-9' || true
}

node_alive() { ctl 20 "$1" ping >/dev/null 2>&1; }

prepare_dir() {
    local n=$1 dir
    dir=$(node_dir "$n")
    as_root rm -rf "$dir"
    as_root mkdir -p "$dir/mnesia" "$dir/log"
    echo '[].' | as_root tee "$dir/enabled_plugins" >/dev/null
    as_root tee "$dir/rabbitmq.conf" >/dev/null <<EOF
# written by swarrow scripts/rabbitmq-cluster.sh for node $(node_name "$n")
listeners.tcp.1 = $HOST:$(amqp_port "$n")
# guest may log in over loopback from the test clients (the node listens on loopback only).
loopback_users = none
EOF
    as_root chown -R rabbitmq:rabbitmq "$dir"
}

ensure_cookie() {
    # All nodes and rabbitmqctl read the rabbitmq user's cookie; on a fresh machine it may not exist yet,
    # and three nodes creating it at once could disagree.
    local cookie=/var/lib/rabbitmq/.erlang.cookie
    if ! as_root test -s "$cookie"; then
        log "creating the Erlang cookie $cookie"
        as_root mkdir -p /var/lib/rabbitmq
        head -c 30 /dev/urandom | od -An -tx1 | tr -dc 'A-Z0-9a-f' | tr 'a-f' 'A-F' | as_root tee "$cookie" >/dev/null
        as_root chown rabbitmq:rabbitmq "$cookie"
        as_root chmod 400 "$cookie"
    fi
}

launch() {
    # Start node $1 detached, in a subshell so its environment does not leak into the next one.
    (
        node_env "$1"
        as_root rabbitmq-server -detached >/dev/null 2>&1
    ) || die "rabbitmq-server -detached failed for $(node_name "$1") (logs: $(node_dir "$1")/log)"
}

await_node() {
    # Until node $1 has booted AND its AMQP port accepts a connection (a restarted node answers
    # await_startup a few seconds before its listener takes clients).
    local n=$1 deadline=$((SECONDS + TIMEOUT)) port
    port=$(amqp_port "$n")
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ctl 20 "$n" await_startup --timeout 15 >/dev/null 2>&1; then
            break
        fi
        sleep 1
    done
    while [ "$SECONDS" -lt "$deadline" ]; do
        if port_open "$port"; then
            return 0
        fi
        sleep 0.2
    done
    show_logs "$n"
    die "$(node_name "$n") did not accept AMQP on $HOST:$port within ${TIMEOUT} s"
}

show_logs() {
    local f
    for f in "$(node_dir "$1")"/log/*.log; do
        [ -r "$f" ] || continue
        echo "---- $f (last 20 lines)" >&2
        tail -n 20 "$f" >&2
    done
}

join() {
    # Join node $1 to rmq1, retried: concurrent or early joins sometimes fail with a mnesia error.
    local n=$1 attempt out
    out="$(node_dir "$n")/log/join.out"
    for attempt in $(seq 1 "$JOIN_ATTEMPTS"); do
        # The CLI prints harmless errors while the app restarts; keep them in a file, shown on failure.
        if ctl 60 "$n" stop_app >"$out" 2>&1 &&
            ctl 60 "$n" join_cluster "$(node_name 1)" >>"$out" 2>&1 &&
            ctl 60 "$n" start_app >>"$out" 2>&1; then
            log "$(node_name "$n") joined $(node_name 1)"
            return 0
        fi
        log "join of $(node_name "$n") failed (attempt $attempt/$JOIN_ATTEMPTS); resetting it and retrying"
        tail -n 5 "$out" >&2 || true
        ctl 60 "$n" stop_app >/dev/null 2>&1 || true
        ctl 60 "$n" reset >/dev/null 2>&1 || true
        ctl 60 "$n" start_app >/dev/null 2>&1 || true
        sleep "$attempt"
    done
    die "$(node_name "$n") could not join the cluster after $JOIN_ATTEMPTS attempts"
}

running_count() {
    # How many nodes node $1 sees running, from `cluster_status --formatter json`.
    ctl 20 "$1" cluster_status --formatter json 2>/dev/null |
        python3 -c 'import json, sys; print(len(json.load(sys.stdin).get("running_nodes", [])))' 2>/dev/null ||
        echo 0
}

cluster_up() {
    local n
    for n in "${NODES[@]}"; do
        port_open "$(amqp_port "$n")" || return 1
    done
    [ "$(running_count 1)" = 3 ]
}

stop_node() {
    local n=$1
    if node_alive "$n"; then
        ctl 120 "$n" stop "$(node_dir "$n")/pid" >/dev/null 2>&1 || ctl 60 "$n" stop >/dev/null 2>&1 || true
        log "stopped $(node_name "$n")"
    else
        log "$(node_name "$n") is not running"
    fi
}

cmd_start_all() {
    command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ] ||
        die "rabbitmq-server is not installed (Debian: apt-get install rabbitmq-server; scripts/rabbitmq.sh installs it)"
    if cluster_up; then
        log "the cluster is already up: $(cmd_url)"
        return 0
    fi
    local n started=$SECONDS
    for n in "${NODES[@]}"; do
        if node_alive "$n"; then
            log "$(node_name "$n") runs outside a complete cluster; stopping it for a fresh start"
            ctl 60 "$n" stop >/dev/null 2>&1 || true
        fi
        if port_open "$(amqp_port "$n")"; then
            die "something else listens on $HOST:$(amqp_port "$n")"
        fi
    done
    ensure_cookie
    as_root mkdir -p "$BASE"
    as_root chown rabbitmq:rabbitmq "$BASE"
    for n in "${NODES[@]}"; do
        prepare_dir "$n"
        log "starting $(node_name "$n") on $HOST:$(amqp_port "$n") (distribution port $(($(amqp_port "$n") + DIST_OFFSET)))"
        launch "$n"
    done
    for n in "${NODES[@]}"; do
        await_node "$n"
    done
    # One join at a time: concurrent joins sometimes fail.
    join 2
    join 3
    for n in "${NODES[@]}"; do
        await_node "$n"
    done
    local deadline=$((SECONDS + TIMEOUT))
    until [ "$(running_count 1)" = 3 ]; do
        [ "$SECONDS" -lt "$deadline" ] || die "the cluster did not report 3 running nodes within ${TIMEOUT} s"
        sleep 1
    done
    log "cluster up in $((SECONDS - started)) s: $(cmd_url)"
}

cmd_stop_all() {
    local n
    # Stop in reverse: rmq1 stops last, so it is the node that knows the latest state.
    for n in 3 2 1; do
        stop_node "$n"
    done
}

cmd_status() {
    local n ok=0 pid
    for n in "${NODES[@]}"; do
        local state="down"
        if port_open "$(amqp_port "$n")"; then
            state="accepts AMQP"
        elif node_alive "$n"; then
            state="running, AMQP not yet open"
        fi
        pid=$(node_pid "$n" 2>/dev/null || true)
        [ "$state" = "accepts AMQP" ] || ok=1
        log "$(node_name "$n")  $HOST:$(amqp_port "$n")  pid ${pid:--}  $state"
    done
    for n in "${NODES[@]}"; do
        if node_alive "$n"; then
            ctl 20 "$n" cluster_status --formatter json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
print("[rabbitmq-cluster] members:", " ".join(sorted(s.get("disk_nodes", []))))
print("[rabbitmq-cluster] running:", " ".join(sorted(s.get("running_nodes", []))))
' || true
            break
        fi
    done
    return "$ok"
}

cmd_url() {
    echo "amqp://guest:guest@$HOST:$(amqp_port 1),$HOST:$(amqp_port 2),$HOST:$(amqp_port 3)/"
}

cmd_kill() {
    local n=$1 pid
    pid=$(node_pid "$n")
    [ -n "$pid" ] || die "$(node_name "$n") is not running (no pid)"
    as_root kill -9 "$pid"
    # Bounded wait until the process is gone and the port closed, so callers know the crash happened.
    local deadline=$((SECONDS + 20))
    while kill -0 "$pid" 2>/dev/null || port_open "$(amqp_port "$n")"; do
        [ "$SECONDS" -lt "$deadline" ] || die "$(node_name "$n") (pid $pid) survived kill -9"
        sleep 0.1
    done
    log "killed $(node_name "$n") (pid $pid)"
}

cmd_start_one() {
    local n=$1
    if port_open "$(amqp_port "$n")"; then
        log "$(node_name "$n") already accepts AMQP"
        return 0
    fi
    [ -d "$(node_dir "$n")/mnesia" ] || die "$(node_name "$n") has no data directory: run '$0 start' first"
    if ! node_alive "$n"; then
        log "starting $(node_name "$n")"
        launch "$n"
    fi
    await_node "$n"
    log "$(node_name "$n") accepts AMQP on $HOST:$(amqp_port "$n")"
}

usage() {
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
    start)
        if [ -n "${2:-}" ]; then
            check_n "$2"
            cmd_start_one "$2"
        else
            cmd_start_all
        fi
        ;;
    stop)
        if [ -n "${2:-}" ]; then
            check_n "$2"
            stop_node "$2"
        else
            cmd_stop_all
        fi
        ;;
    restart)
        check_n "${2:-}"
        stop_node "$2"
        cmd_start_one "$2"
        ;;
    kill)
        check_n "${2:-}"
        cmd_kill "$2"
        ;;
    status) cmd_status ;;
    url) cmd_url ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
esac
