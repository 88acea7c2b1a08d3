#!/usr/bin/env bash
# Shared settings for walcast's scripts: where the dedicated PostgreSQL
# clusters and RabbitMQ live. Sourced, never run.

# PostgreSQL major version: that of an existing "walcast" cluster, else the
# newest server installed, else 15 (Debian 12's; scripts/ensure-services.sh
# installs Debian's default server when none is installed).
if [ -z "${WALCAST_PG_VERSION:-}" ]; then
  WALCAST_PG_VERSION=$(find /etc/postgresql -mindepth 2 -maxdepth 2 -name "${WALCAST_PG_CLUSTER:-walcast}" 2>/dev/null |
    awk -F/ '{print $4}' | sort -n | tail -n 1)
fi
if [ -z "${WALCAST_PG_VERSION:-}" ]; then
  WALCAST_PG_VERSION=$(find /usr/lib/postgresql -mindepth 3 -maxdepth 3 -path '*/bin/postgres' 2>/dev/null |
    awk -F/ '{print $5}' | sort -n | tail -n 1)
fi
export WALCAST_PG_VERSION="${WALCAST_PG_VERSION:-15}"
# The logical cluster (wal_level=logical) that dev.sh and the tests use.
export WALCAST_PG_CLUSTER="${WALCAST_PG_CLUSTER:-walcast}"
export WALCAST_PG_PORT="${WALCAST_PG_PORT:-5433}"
# Test only: a second logical cluster that fault tests restart on purpose.
export WALCAST_PG_FAULT_CLUSTER="${WALCAST_PG_FAULT_CLUSTER:-walcast_fault}"
export WALCAST_PG_FAULT_PORT="${WALCAST_PG_FAULT_PORT:-5434}"
# Test only: a cluster that is *not* configured for logical replication
# (wal_level=replica), for the "wal_level is not logical" paths.
export WALCAST_PG_REPLICA_CLUSTER="${WALCAST_PG_REPLICA_CLUSTER:-walcast_replica}"
export WALCAST_PG_REPLICA_PORT="${WALCAST_PG_REPLICA_PORT:-5435}"
# Superuser URLs of those clusters (trust on 127.0.0.1); tests create their
# own databases.
export WALCAST_TEST_PG_URL="${WALCAST_TEST_PG_URL:-postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/postgres}"
export WALCAST_TEST_PG_FAULT_URL="${WALCAST_TEST_PG_FAULT_URL:-postgres://postgres@127.0.0.1:${WALCAST_PG_FAULT_PORT}/postgres}"
export WALCAST_TEST_PG_REPLICA_URL="${WALCAST_TEST_PG_REPLICA_URL:-postgres://postgres@127.0.0.1:${WALCAST_PG_REPLICA_PORT}/postgres}"
export WALCAST_TEST_AMQP_URL="${WALCAST_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
# Test only: a logical cluster with ssl=on and a hostssl-only pg_hba (plain
# connections are refused), certificates from scripts/ensure-services.sh:
# a CA, a server certificate for DNS:localhost only (so verify-full to
# 127.0.0.1 is a host-name mismatch), a client certificate for the role
# walcast_cert (which must present it), and an unrelated second CA.
export WALCAST_PG_TLS_CLUSTER="${WALCAST_PG_TLS_CLUSTER:-walcast_tls}"
export WALCAST_PG_TLS_PORT="${WALCAST_PG_TLS_PORT:-5436}"
export WALCAST_TEST_PG_TLS_URL="${WALCAST_TEST_PG_TLS_URL:-postgres://postgres@127.0.0.1:${WALCAST_PG_TLS_PORT}/postgres}"
export WALCAST_TEST_TLS_DIR="${WALCAST_TEST_TLS_DIR:-/var/lib/walcast-test/tls}"
export WALCAST_TEST_TLS_CA="${WALCAST_TEST_TLS_CA:-$WALCAST_TEST_TLS_DIR/ca.crt}"
export WALCAST_TEST_TLS_OTHER_CA="${WALCAST_TEST_TLS_OTHER_CA:-$WALCAST_TEST_TLS_DIR/other-ca.crt}"
export WALCAST_TEST_TLS_CLIENT_CERT="${WALCAST_TEST_TLS_CLIENT_CERT:-$WALCAST_TEST_TLS_DIR/client.crt}"
export WALCAST_TEST_TLS_CLIENT_KEY="${WALCAST_TEST_TLS_CLIENT_KEY:-$WALCAST_TEST_TLS_DIR/client.key}"
