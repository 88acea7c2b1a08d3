#!/usr/bin/env bash
# Shared settings for walcast's scripts: where the dedicated logical-replication
# PostgreSQL cluster and RabbitMQ live. Sourced, never run.
export WALCAST_PG_VERSION="${WALCAST_PG_VERSION:-15}"
export WALCAST_PG_CLUSTER="${WALCAST_PG_CLUSTER:-walcast}"
export WALCAST_PG_PORT="${WALCAST_PG_PORT:-5433}"
# A second logical cluster that fault tests restart on purpose.
export WALCAST_PG_FAULT_CLUSTER="${WALCAST_PG_FAULT_CLUSTER:-walcast_fault}"
export WALCAST_PG_FAULT_PORT="${WALCAST_PG_FAULT_PORT:-5434}"
export WALCAST_TEST_PG_FAULT_URL="${WALCAST_TEST_PG_FAULT_URL:-postgres://postgres@127.0.0.1:${WALCAST_PG_FAULT_PORT}/postgres}"
# The superuser URL of the dedicated cluster; tests create their own databases.
export WALCAST_TEST_PG_URL="${WALCAST_TEST_PG_URL:-postgres://postgres@127.0.0.1:${WALCAST_PG_PORT}/postgres}"
# A cluster that is *not* configured for logical replication (the machine's stock one).
export WALCAST_TEST_PG_REPLICA_URL="${WALCAST_TEST_PG_REPLICA_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
export WALCAST_TEST_AMQP_URL="${WALCAST_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}"
