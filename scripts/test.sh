#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs and starts what is
# missing (scripts/ensure-services.sh: PostgreSQL clusters walcast :5433 and
# walcast_fault :5434 with wal_level=logical, walcast_replica :5435 with
# wal_level=replica, RabbitMQ; Chromium and the Node packages for the
# Socket.IO and browser tests), then runs cargo fmt,
# clippy, a compile check of the fuzz target and of the Docker build
# context, and every test against the real services.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh --test it -- tail::   # extra arguments go to `cargo test`
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

log() { printf '[test] %s\n' "$*" >&2; }

# shellcheck source=scripts/cargo-env.sh
. scripts/cargo-env.sh

# The build takes about 5 GB, and RabbitMQ blocks every publisher when its
# disk runs low (a "low on disk" resource alarm), which makes the delivery
# tests stall rather than fail fast: say so up front.
free_kb=$(df -Pk "$root" | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt $((8 * 1024 * 1024)) ]; then
  log "WARNING: only $((free_kb / 1024)) MB free on $(df -P "$root" | awk 'NR==2 {print $6}'):"
  log "  the build needs about 5 GB, and RabbitMQ blocks publishers when its disk runs low"
fi

bash scripts/ensure-services.sh
# shellcheck source=scripts/env.sh
. scripts/env.sh

# Chromium for the dashboard's browser test (tests/it/dashboard_e2e.rs): the
# Debian package, driven by playwright-core, which never downloads a browser.
if ! command -v chromium >/dev/null 2>&1; then
  log "installing chromium"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq chromium >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }
fi

# Node packages for the Socket.IO client and browser tests.
if command -v npm >/dev/null 2>&1; then
  for dir in tests/js tests/e2e; do
    if [ -f "$dir/package.json" ] && [ ! -d "$dir/node_modules" ]; then
      log "npm install in $dir"
      (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
    fi
  done
fi

# python-socketio for the Python example (examples/python), which
# tests/js_client.rs runs: a venv of the project's own under target/.
venv=target/python-venv
if ! "$venv/bin/python" -c 'import socketio, requests' >/dev/null 2>&1; then
  log "python venv for examples/python"
  python3 -m venv "$venv" >/dev/null 2>&1 || {
    apt-get install -y -qq python3-venv >/dev/null 2>&1 ||
      { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null; }
    python3 -m venv "$venv"
  }
  "$venv/bin/pip" install -q -r examples/python/requirements.txt
fi

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
# The fault-injection hooks (a test-only cargo feature, off in release
# builds) and the tests that use them.
cargo clippy --all-targets --quiet --features fault-injection -- -D warnings
# The fuzz target compiles src/decoder and src/event/ on its own (a
# separate workspace, fuzz/); checking it on stable keeps it from rotting.
# Running it needs nightly: see README, "Development".
log "cargo check fuzz/ (fuzz target)"
cargo check --locked --quiet --manifest-path fuzz/Cargo.toml
# The Docker image's build context (.dockerignore + the Dockerfile's COPY
# lines) holds every file the build reads; no Docker engine needed.
log "docker build context"
bash scripts/check-docker-context.sh
log "cargo test"
status=0
cargo test --all-targets --features fault-injection --no-fail-fast "$@" || status=$?
log "disk after the run: $(df -Ph "$root" | awk 'NR==2 {print $4 " free of " $2}'); target/ is $(du -sh target 2>/dev/null | cut -f1)"
exit "$status"
