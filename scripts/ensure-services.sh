#!/usr/bin/env bash
# Installs what is missing and starts the services walcast needs on this
# machine, idempotently:
#   - a dedicated PostgreSQL cluster with wal_level=logical (port 5433 by default),
#   - RabbitMQ on 5672 (started if it is not running).
# Runs as root (Debian's pg_createcluster/pg_ctlcluster); `postgres` itself
# runs as the postgres user.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$here/env.sh"

log() { printf '[ensure-services] %s\n' "$*" >&2; }

need_apt=()
command -v pg_createcluster >/dev/null 2>&1 || need_apt+=("postgresql-common")
[ -x "/usr/lib/postgresql/${WALCAST_PG_VERSION}/bin/postgres" ] || need_apt+=("postgresql-${WALCAST_PG_VERSION}")
command -v psql >/dev/null 2>&1 || need_apt+=("postgresql-client")
command -v rabbitmq-server >/dev/null 2>&1 || need_apt+=("rabbitmq-server")
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# --- PostgreSQL: dedicated logical clusters ------------------------------------
# ensure_cluster NAME PORT SHARED_BUFFERS
ensure_cluster() {
  local v="$WALCAST_PG_VERSION" c="$1" port="$2" shared_buffers="$3"
  local confdir="/etc/postgresql/$v/$c"
  if [ ! -d "$confdir" ]; then
    log "creating cluster $v/$c on port $port"
    pg_createcluster "$v" "$c" -p "$port" >/dev/null
  fi
  mkdir -p "$confdir/conf.d"
  cat > "$confdir/conf.d/walcast.conf" <<CONF
# Managed by walcast's scripts/ensure-services.sh
listen_addresses = '127.0.0.1'
port = $port
wal_level = logical
max_replication_slots = 200
max_wal_senders = 200
max_connections = 400
max_slot_wal_keep_size = 4GB
wal_sender_timeout = 60s
fsync = on
synchronous_commit = on
shared_buffers = $shared_buffers
max_wal_size = 4GB
CONF
  # Trust for the superuser (tests), real password methods for dedicated
  # roles so authentication paths are exercised against a real server.
  cat > "$confdir/pg_hba.conf" <<HBA
# Managed by walcast's scripts/ensure-services.sh
local   all  all                          trust
host    all  walcast_scram   127.0.0.1/32 scram-sha-256
host    all  walcast_md5     127.0.0.1/32 md5
host    all  walcast_clear   127.0.0.1/32 password
host    all  all             127.0.0.1/32 trust
host    all  all             ::1/128      trust
local   replication all                   trust
host    replication all      127.0.0.1/32 trust
HBA
  chown -R postgres:postgres "$confdir"
  local status
  status=$(pg_lsclusters -h | awk -v v="$v" -v c="$c" '$1==v && $2==c {print $4}')
  if [ "$status" != "online" ]; then
    log "starting cluster $v/$c"
    pg_ctlcluster --skip-systemctl-redirect "$v" "$c" start
  else
    # Pick up what a reload can apply (pg_hba, most settings).
    pg_ctlcluster --skip-systemctl-redirect "$v" "$c" reload >/dev/null 2>&1 || true
  fi
  if [ "$(psql -h 127.0.0.1 -p "$port" -U postgres -Atc 'show wal_level')" != "logical" ]; then
    log "restarting $v/$c to apply wal_level=logical"
    pg_ctlcluster --skip-systemctl-redirect "$v" "$c" restart
  fi
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
  done
}

v="$WALCAST_PG_VERSION"; port="$WALCAST_PG_PORT"
ensure_cluster "$WALCAST_PG_CLUSTER" "$WALCAST_PG_PORT" 256MB
# A second cluster that fault tests stop and restart on purpose, so that the
# shared one stays up for every other test.
ensure_cluster "$WALCAST_PG_FAULT_CLUSTER" "$WALCAST_PG_FAULT_PORT" 64MB

# Password roles for the authentication tests (password_encryption decides
# how the secret is stored: md5 for the md5 role, scram for the others).
psql -h 127.0.0.1 -p "$port" -U postgres -q -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walcast_scram') THEN
    CREATE ROLE walcast_scram LOGIN REPLICATION SUPERUSER;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walcast_md5') THEN
    CREATE ROLE walcast_md5 LOGIN REPLICATION SUPERUSER;
  END IF;
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walcast_clear') THEN
    CREATE ROLE walcast_clear LOGIN REPLICATION SUPERUSER;
  END IF;
END $$;
SET password_encryption = 'scram-sha-256';
ALTER ROLE walcast_scram PASSWORD 'scram-secret';
ALTER ROLE walcast_clear PASSWORD 'clear-secret';
SET password_encryption = 'md5';
ALTER ROLE walcast_md5 PASSWORD 'md5-secret';
SQL

# The stock cluster (wal_level=replica) serves the "not logical" tests; start
# it if it is there and stopped.
if pg_lsclusters -h | awk -v v="$v" '$1==v && $2=="main" && $4!="online" {f=1} END {exit !f}'; then
  log "starting cluster $v/main"
  pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
fi

# --- RabbitMQ -----------------------------------------------------------------
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting rabbitmq-server"
  rabbitmq-server -detached
  for _ in $(seq 1 120); do
    rabbitmqctl -q await_startup >/dev/null 2>&1 && break
    sleep 1
  done
fi
log "postgres (logical) on 127.0.0.1:$port, rabbitmq on 127.0.0.1:5672"
