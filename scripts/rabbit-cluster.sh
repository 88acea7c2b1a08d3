#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this machine, for trying walcast's
# quorum queues and failover by hand (the test suite starts its own, on
# free ports: tests/it/support/rabbit_cluster.rs).
#
#   scripts/rabbit-cluster.sh start  [DIR]   # start and cluster the nodes
#   scripts/rabbit-cluster.sh status [DIR]   # cluster status, quorum queues
#   scripts/rabbit-cluster.sh stop   [DIR]   # stop the nodes, delete DIR
#
# Nodes walcast-a@localhost, walcast-b@localhost, walcast-c@localhost with
# AMQP on 127.0.0.1:5681-5683 and Erlang distribution on 25681-25683, each
# with its own data, logs, empty plugin list and rabbitmq.conf under DIR
# (default /tmp/walcast-rabbit-cluster). The packaged rabbitmq-server and
# rabbitmqctl re-run themselves as user rabbitmq with
# HOME=/var/lib/rabbitmq, so the nodes and the CLI share one Erlang cookie.
# Run as root (or as rabbitmq). The shared broker on 5672 is not touched.
#
# Point walcast at every node; it tries them in order on each (re)connect:
#   WALCAST_RABBITMQ_URL=amqp://guest:guest@127.0.0.1:5681/%2f,amqp://guest:guest@127.0.0.1:5682/%2f,amqp://guest:guest@127.0.0.1:5683/%2f
#   WALCAST_RABBITMQ_QUEUE_TYPE=quorum
set -euo pipefail

command=${1:-}
dir=${2:-/tmp/walcast-rabbit-cluster}
members=(a b c)

node_name() { echo "walcast-$1@localhost"; }
node_index() { case $1 in a) echo 1 ;; b) echo 2 ;; c) echo 3 ;; esac; }

node_env() {
  local member=$1 i
  i=$(node_index "$member")
  local base="$dir/$member"
  echo RABBITMQ_NODENAME="$(node_name "$member")" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_NODE_PORT=$((5680 + i)) \
    RABBITMQ_DIST_PORT=$((25680 + i)) \
    RABBITMQ_MNESIA_BASE="$base/mnesia" \
    RABBITMQ_LOG_BASE="$base/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$base/enabled_plugins" \
    RABBITMQ_CONFIG_FILE="$base/rabbitmq.conf" \
    RABBITMQ_PID_FILE="$base/pid"
}

ctl() {
  local member=$1
  shift
  rabbitmqctl -n "$(node_name "$member")" "$@"
}

start() {
  command -v rabbitmq-server >/dev/null || {
    echo "rabbitmq-server is not installed (apt-get install rabbitmq-server)" >&2
    exit 1
  }
  for member in "${members[@]}"; do
    local i base
    i=$(node_index "$member")
    base="$dir/$member"
    if ctl "$member" ping >/dev/null 2>&1; then
      echo "$(node_name "$member") is already running"
      continue
    fi
    mkdir -p "$base/mnesia" "$base/log"
    : >"$base/enabled_plugins"
    cat >"$base/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$((5680 + i))
log.console = false
log.file.level = info
EOF
    chown -R rabbitmq:rabbitmq "$dir"
    # shellcheck disable=SC2046
    env $(node_env "$member") rabbitmq-server -detached
  done
  for member in "${members[@]}"; do
    for _ in $(seq 1 120); do
      ctl "$member" await_startup --timeout 30 >/dev/null 2>&1 && break
      sleep 0.5
    done
    ctl "$member" await_startup --timeout 30 >/dev/null
  done
  for member in b c; do
    if ctl a cluster_status --formatter json 2>/dev/null | grep -q "$(node_name "$member")"; then
      continue
    fi
    ctl "$member" stop_app
    ctl "$member" join_cluster "$(node_name a)"
    ctl "$member" start_app
  done
  status
}

status() {
  ctl a cluster_status 2>/dev/null || ctl b cluster_status 2>/dev/null || ctl c cluster_status
  echo
  for member in "${members[@]}"; do
    if ctl "$member" list_queues name type leader members messages 2>/dev/null; then
      break
    fi
  done
}

stop() {
  for member in "${members[@]}"; do
    ctl "$member" stop >/dev/null 2>&1 || true
  done
  rm -rf "$dir"
}

case $command in
start) start ;;
status) status ;;
stop) stop ;;
*)
  echo "usage: $0 start|status|stop [DIR]" >&2
  exit 2
  ;;
esac
