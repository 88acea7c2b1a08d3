#!/usr/bin/env bash
# Installs what is missing and starts the services walcast needs on this
# machine, idempotently (a second run only checks, in about a second):
#   - a dedicated PostgreSQL cluster "walcast" with wal_level=logical
#     (127.0.0.1:5433 by default, trust for the postgres superuser),
#   - RabbitMQ on 5672 (started if it is not running),
# and, for the test suite only (skipped with --dev or WALCAST_SERVICES=dev):
#   - login roles with known passwords on "walcast" for the authentication
#     tests (walcast_scram, walcast_md5, walcast_clear),
#   - "walcast_fault" (logical, :5434), which fault tests stop and restart,
#   - "walcast_replica" (wal_level=replica, :5435, ssl=off) for the "not
#     logical" and "server does not support SSL" tests,
#   - "walcast_tls" (logical, :5436, ssl=on, hostssl-only pg_hba) and its
#     certificates (made with openssl) for the TLS tests.
# It never touches the machine's other clusters (such as Debian's "main").
# Runs as root (Debian's pg_createcluster/pg_ctlcluster); `postgres` itself
# runs as the postgres user. Ports and names: scripts/env.sh.
#
#   scripts/ensure-services.sh          # everything the tests need
#   scripts/ensure-services.sh --dev    # what walcast itself needs (dev.sh)
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=scripts/env.sh
. "$here/env.sh"

log() { printf '[ensure-services] %s\n' "$*" >&2; }

mode="${WALCAST_SERVICES:-test}"
for arg in "$@"; do
  case "$arg" in
    --dev) mode="dev" ;;
    --test) mode="test" ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) log "unknown argument: $arg (--dev or --test)"; exit 2 ;;
  esac
done
case "$mode" in
  dev | test) ;;
  *) log "WALCAST_SERVICES must be dev or test, not '$mode'"; exit 2 ;;
esac

if [ "$(id -u)" -ne 0 ]; then
  log "run as root: it installs packages and manages PostgreSQL clusters with pg_ctlcluster"
  exit 1
fi

# --- packages -------------------------------------------------------------------
need_apt=()
command -v pg_createcluster >/dev/null 2>&1 || need_apt+=("postgresql-common")
if [ ! -x "/usr/lib/postgresql/${WALCAST_PG_VERSION}/bin/postgres" ]; then
  # Debian's default server unless a version was asked for that is not it.
  if apt-cache show "postgresql-${WALCAST_PG_VERSION}" >/dev/null 2>&1; then
    need_apt+=("postgresql-${WALCAST_PG_VERSION}")
  else
    need_apt+=("postgresql")
  fi
fi
command -v psql >/dev/null 2>&1 || need_apt+=("postgresql-client")
command -v rabbitmq-server >/dev/null 2>&1 || need_apt+=("rabbitmq-server")
# The TLS tests make their certificates with the openssl CLI.
[ "$mode" = dev ] || command -v openssl >/dev/null 2>&1 || need_apt+=("openssl")
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  if [ ! -x "/usr/lib/postgresql/${WALCAST_PG_VERSION}/bin/postgres" ]; then
    # Debian's default server is another major version than env.sh guessed.
    unset WALCAST_PG_VERSION
    # shellcheck source=scripts/env.sh
    . "$here/env.sh"
  fi
fi
v="$WALCAST_PG_VERSION"

# --- PostgreSQL: dedicated clusters -------------------------------------------------
# ensure_cluster NAME PORT WAL_LEVEL SHARED_BUFFERS MAX_CONNECTIONS [EXTRA_CONF [HBA]]
ensure_cluster() {
  local c="$1" port="$2" wal_level="$3" shared_buffers="$4" max_connections="$5"
  local extra_conf="${6:-}" hba_override="${7:-}"
  local confdir="/etc/postgresql/$v/$c"
  if [ ! -d "$confdir" ]; then
    log "creating cluster $v/$c on port $port"
    pg_createcluster "$v" "$c" -p "$port" >/dev/null
  fi
  mkdir -p "$confdir/conf.d"
  # The not-logical cluster stands for a stock server: it keeps Postgres's
  # default (-1, unlimited), which `walcast check` warns about (tests/it/cli.rs).
  local keep=4GB
  [ "$wal_level" = logical ] || keep=-1
  local conf
  conf=$(cat <<CONF
# Managed by walcast's scripts/ensure-services.sh
listen_addresses = '127.0.0.1'
port = $port
wal_level = $wal_level
max_replication_slots = 200
max_wal_senders = 200
max_connections = $max_connections
max_slot_wal_keep_size = $keep
wal_sender_timeout = 60s
fsync = on
synchronous_commit = on
shared_buffers = $shared_buffers
max_wal_size = 4GB
$extra_conf
CONF
)
  # Trust for the superuser (tests, dev.sh), real password methods for the
  # test roles so authentication paths are exercised against a real server.
  local hba
  hba=$(cat <<HBA
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
)
  [ -z "$hba_override" ] || hba="$hba_override"
  # Written only when they change, so an up-to-date cluster is left alone.
  local changed=no
  if [ "$(cat "$confdir/conf.d/walcast.conf" 2>/dev/null)" != "$conf" ]; then
    printf '%s\n' "$conf" > "$confdir/conf.d/walcast.conf"
    changed=yes
  fi
  if [ "$(cat "$confdir/pg_hba.conf" 2>/dev/null)" != "$hba" ]; then
    printf '%s\n' "$hba" > "$confdir/pg_hba.conf"
    changed=yes
  fi
  chown -R postgres:postgres "$confdir"
  local status
  status=$(pg_lsclusters -h | awk -v v="$v" -v c="$c" '$1==v && $2==c {print $4}')
  if [ "$status" != "online" ]; then
    log "starting cluster $v/$c"
    pg_ctlcluster --skip-systemctl-redirect "$v" "$c" start
  elif [ "$changed" = yes ]; then
    # Pick up what a reload can apply (pg_hba, most settings).
    pg_ctlcluster --skip-systemctl-redirect "$v" "$c" reload >/dev/null 2>&1 || true
  fi
  for _ in $(seq 1 60); do
    pg_isready -q -h 127.0.0.1 -p "$port" && break
    sleep 0.5
  done
  if [ "$(psql -h 127.0.0.1 -p "$port" -U postgres -Atc 'show wal_level')" != "$wal_level" ]; then
    log "restarting $v/$c to apply wal_level=$wal_level"
    pg_ctlcluster --skip-systemctl-redirect "$v" "$c" restart
    for _ in $(seq 1 60); do
      pg_isready -q -h 127.0.0.1 -p "$port" && break
      sleep 0.5
    done
  fi
}

ensure_cluster "$WALCAST_PG_CLUSTER" "$WALCAST_PG_PORT" logical 256MB 400

if [ "$mode" = test ]; then
  # Fault tests stop and restart this one on purpose, so that the shared one
  # stays up for every other test.
  ensure_cluster "$WALCAST_PG_FAULT_CLUSTER" "$WALCAST_PG_FAULT_PORT" logical 64MB 400
  # Not configured for logical replication: `walcast check` and slot
  # creation must refuse it.
  # ssl=off: Debian turns ssl on with its snakeoil certificate, and the
  # TLS tests need a server that answers 'N' to SSLRequest.
  ensure_cluster "$WALCAST_PG_REPLICA_CLUSTER" "$WALCAST_PG_REPLICA_PORT" replica 32MB 100 "ssl = off"

  # TLS: certificates made once (kept while they are complete), then a
  # cluster that accepts only hostssl. The server certificate names
  # DNS:localhost only; walcast_cert must present the client certificate.
  tls="$WALCAST_TEST_TLS_DIR"
  tls_made=no
  if [ ! -s "$tls/other-ca.crt" ]; then
    tls_made=yes
    log "making test certificates in $tls"
    mkdir -p "$tls"
    tmp=$(mktemp -d)
    (
      cd "$tmp"
      ossl() { openssl "$@" >/dev/null 2>&1; }
      for ca in ca other-ca; do
        ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
          -subj "/CN=walcast test $ca" -keyout "$ca.key" -out "$ca.crt" \
          -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
      done
      leaf() { # NAME SUBJECT EXTFILE_LINES
        printf '%s\n' "$3" > "$1.ext"
        ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
          -subj "$2" -keyout "$1.key" -out "$1.csr"
        ossl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial \
          -days 3650 -extfile "$1.ext" -out "$1.crt"
      }
      leaf server "/CN=localhost" "subjectAltName=DNS:localhost
extendedKeyUsage=serverAuth
basicConstraints=CA:FALSE"
      leaf client "/CN=walcast_cert" "extendedKeyUsage=clientAuth
basicConstraints=CA:FALSE"
      cp ca.crt ca.key other-ca.crt server.crt server.key client.crt client.key "$tls/"
    )
    rm -rf "$tmp"
    chown postgres:postgres "$tls/server.key" "$tls/server.crt"
    chmod 600 "$tls/server.key" "$tls/client.key" "$tls/ca.key"
    chmod 755 "$tls"
  fi
  tls_hba=$(cat <<HBA
# Managed by walcast's scripts/ensure-services.sh: TLS only, no host lines.
local      all          all                          trust
local      replication  all                          trust
hostssl    all          walcast_cert  127.0.0.1/32   cert
hostssl    replication  walcast_cert  127.0.0.1/32   cert
hostssl    all          all           127.0.0.1/32   trust
hostssl    replication  all           127.0.0.1/32   trust
HBA
)
  ensure_cluster "$WALCAST_PG_TLS_CLUSTER" "$WALCAST_PG_TLS_PORT" logical 32MB 100 "ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'
ssl_ca_file = '$tls/ca.crt'" "$tls_hba"
  if [ "$tls_made" = yes ]; then
    # A running server still holds the certificates it loaded.
    pg_ctlcluster --skip-systemctl-redirect "$v" "$WALCAST_PG_TLS_CLUSTER" reload >/dev/null 2>&1 || true
  fi

  # Password roles for the authentication tests (password_encryption decides
  # how the secret is stored: md5 for the md5 role, scram for the others).
  psql -h 127.0.0.1 -p "$WALCAST_PG_PORT" -U postgres -q -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
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
  # The TLS cluster's client-certificate role (over the Unix socket: TCP
  # there is TLS only).
  psql -h /var/run/postgresql -p "$WALCAST_PG_TLS_PORT" -U postgres -q -v ON_ERROR_STOP=1 <<'SQL' >/dev/null
DO $$
BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'walcast_cert') THEN
    CREATE ROLE walcast_cert LOGIN REPLICATION SUPERUSER;
  END IF;
END $$;
SQL
fi

# --- RabbitMQ -----------------------------------------------------------------
# Something listening on 5672 counts as up (rabbitmqctl alone takes seconds).
if ! (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null &&
   ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting rabbitmq-server"
  rabbitmq-server -detached
  for _ in $(seq 1 120); do
    rabbitmqctl -q await_startup >/dev/null 2>&1 && break
    sleep 1
  done
fi
if [ "$mode" = test ]; then
  log "postgres $v: logical on 127.0.0.1:$WALCAST_PG_PORT (fault tests :$WALCAST_PG_FAULT_PORT), replica on :$WALCAST_PG_REPLICA_PORT, tls-only on :$WALCAST_PG_TLS_PORT; rabbitmq on 127.0.0.1:5672"
else
  log "postgres $v (logical) on 127.0.0.1:$WALCAST_PG_PORT, rabbitmq on 127.0.0.1:5672"
fi
