#!/usr/bin/env bash
# Make sure a RabbitMQ broker listens on 127.0.0.1:5672, for `make run`, `make test` and CI.
#
#   scripts/rabbitmq.sh [start]   install (Debian, as root) and start a loopback-only node; a no-op when one runs
#   scripts/rabbitmq.sh stop      stop the node this script started
#   scripts/rabbitmq.sh status    show whether the port answers and what the node says
#
# Everything binds to loopback: AMQP (5672), Erlang distribution (25672) and epmd (4369). The test suite and
# the benchmarks only ever talk to 127.0.0.1. To use another broker instead, point SWARROW_URL at it and set
# SWARROW_SKIP_RABBITMQ=1 for make.
set -euo pipefail

HOST=127.0.0.1
PORT=5672
NODE=rabbit@localhost
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
MARKER="# managed by swarrow scripts/rabbitmq.sh"

# The Debian wrapper runs the node as the rabbitmq user through `su`, which keeps these variables.
export RABBITMQ_NODENAME=$NODE
export RABBITMQ_NODE_IP_ADDRESS=$HOST
export RABBITMQ_NODE_PORT=$PORT
export ERL_EPMD_ADDRESS=$HOST
export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"

log() { printf '[rabbitmq.sh] %s\n' "$*"; }

port_open() {
    # bash's /dev/tcp; a subshell so the descriptor closes at once.
    (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null
}

as_root() {
    if [ "$(id -u)" = 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo -n -E "$@"
    else
        return 1
    fi
}

can_be_root() {
    [ "$(id -u)" = 0 ] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }
}

ctl() {
    # rabbitmqctl with the loopback node name and a bound on how long it may hang. Through as_root when
    # possible because the Debian wrapper needs root (or the rabbitmq user) to read the Erlang cookie.
    local seconds=$1
    shift
    local cmd=(rabbitmqctl -n "$NODE" "$@")
    if command -v timeout >/dev/null 2>&1; then
        cmd=(timeout "$seconds" "${cmd[@]}")
    fi
    if can_be_root; then
        as_root "${cmd[@]}"
    else
        "${cmd[@]}"
    fi
}

install_rabbitmq() {
    if command -v rabbitmq-server >/dev/null 2>&1 || [ -x /usr/sbin/rabbitmq-server ]; then
        return 0
    fi
    if command -v apt-get >/dev/null 2>&1 && can_be_root; then
        log "rabbitmq-server is not installed; installing it with apt-get (takes a minute or two)"
        # Keep the package's maintainer scripts from starting a node of their own (rabbit@<hostname>, bound
        # to every interface): invoke-rc.d and deb-systemd-invoke ask policy-rc.d, and 101 means "don't".
        local policy=/usr/sbin/policy-rc.d own_policy=0
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
            as_root chmod 755 "$policy"
            own_policy=1
        fi
        local rc=0
        as_root apt-get update -qq || rc=$?
        if [ "$rc" = 0 ]; then
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                -o DPkg::Lock::Timeout=300 rabbitmq-server >/dev/null || rc=$?
        fi
        if [ "$own_policy" = 1 ]; then
            as_root rm -f "$policy"
        fi
        [ "$rc" = 0 ] || { log "apt-get failed (exit $rc)" >&2; exit 1; }
        return 0
    fi
    cat >&2 <<EOF
[rabbitmq.sh] No RabbitMQ answers on $HOST:$PORT and rabbitmq-server is not installed.
[rabbitmq.sh] Install it, for example:
[rabbitmq.sh]     sudo apt-get install rabbitmq-server        (Debian, Ubuntu)
[rabbitmq.sh]     brew install rabbitmq                        (macOS)
[rabbitmq.sh]     docker run -d -p 127.0.0.1:5672:5672 rabbitmq:3
[rabbitmq.sh] or point SWARROW_URL at a broker you have (amqp://user:pass@host:5672/) and run make with
[rabbitmq.sh] SWARROW_SKIP_RABBITMQ=1.
EOF
    exit 1
}

write_config() {
    # Belt and braces next to the environment variables: a node started by other means (systemd) from this
    # config still binds AMQP to loopback. Never overwrite a config someone else wrote.
    local dir=/etc/rabbitmq conf=/etc/rabbitmq/rabbitmq.conf
    [ -d "$dir" ] && can_be_root || return 0
    if [ -s "$conf" ] && ! grep -qF "$MARKER" "$conf"; then
        log "leaving $conf as it is (not written by this script)"
        return 0
    fi
    as_root tee "$conf" >/dev/null <<EOF
$MARKER
listeners.tcp.default = $HOST:$PORT
# guest/guest may log in from loopback only (RabbitMQ's default, stated here on purpose).
loopback_users.guest = true
EOF
}

node_running() {
    ctl 20 ping >/dev/null 2>&1
}

await_startup() {
    local deadline=$((SECONDS + START_TIMEOUT))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ctl 15 await_startup --timeout 10 >/dev/null 2>&1 && port_open; then
            return 0
        fi
        sleep 1
    done
    return 1
}

show_logs() {
    local f
    for f in /var/log/rabbitmq/startup_log /var/log/rabbitmq/startup_err /var/log/rabbitmq/"$NODE".log; do
        if [ -r "$f" ]; then
            echo "---- $f (last 30 lines)" >&2
            tail -n 30 "$f" >&2
        fi
    done
}

cmd_start() {
    if port_open; then
        log "something already accepts TCP on $HOST:$PORT; using it"
        return 0
    fi
    install_rabbitmq
    write_config
    if node_running; then
        log "node $NODE is up but $HOST:$PORT does not answer yet; waiting"
    else
        log "starting node $NODE on $HOST:$PORT"
        local start_started=$SECONDS
        if can_be_root; then
            as_root rabbitmq-server -detached
        else
            rabbitmq-server -detached
        fi
        log "rabbitmq-server -detached returned after $((SECONDS - start_started)) s"
    fi
    if ! await_startup; then
        log "RabbitMQ did not start within ${START_TIMEOUT} s" >&2
        show_logs
        exit 1
    fi
    log "RabbitMQ is up on $HOST:$PORT"
    enable_plugins
    cmd_status
}

enable_plugins() {
    # The consistent-hash exchange (it ships with RabbitMQ) backs `swarrow declare --shards`; enabling it
    # on a running node needs no restart. A broker we did not start is left as it is.
    if command -v rabbitmq-plugins >/dev/null 2>&1 && can_be_root; then
        as_root timeout 60 rabbitmq-plugins -n "$NODE" enable rabbitmq_consistent_hash_exchange >/dev/null 2>&1 \
            && log "plugin rabbitmq_consistent_hash_exchange enabled" \
            || log "could not enable rabbitmq_consistent_hash_exchange (swarrow declare --shards needs it)"
    fi
}

cmd_stop() {
    if ! command -v rabbitmqctl >/dev/null 2>&1; then
        log "rabbitmqctl is not installed; nothing to stop"
        return 0
    fi
    if node_running; then
        ctl 60 stop
        log "stopped node $NODE"
    else
        log "node $NODE is not running"
    fi
}

cmd_status() {
    if port_open; then
        log "$HOST:$PORT accepts connections"
    else
        log "$HOST:$PORT does not answer"
    fi
    if command -v rabbitmqctl >/dev/null 2>&1; then
        if node_running; then
            # The first lines name the node, its version and uptime; enough to tell what is running.
            ctl 30 status 2>/dev/null | sed -n '1,25p' || true
        else
            log "node $NODE is not running (a broker on the port may be another node or a container)"
        fi
    fi
    if command -v ss >/dev/null 2>&1; then
        ss -ltn 2>/dev/null | awk 'NR == 1 || /:(5672|25672|4369)[[:space:]]/' || true
    fi
    port_open
}

case "${1:-start}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h | --help | help) sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' ;;
    *)
        echo "usage: $0 [start|stop|status]" >&2
        exit 2
        ;;
esac
