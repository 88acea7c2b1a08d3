#!/usr/bin/env bash
# Sourced by the scripts that build walcast: puts rustup's cargo on PATH
# when it is installed but not there (a non-login shell, sudo), and stops
# with the way to install it when it is missing. The scripts install
# PostgreSQL and RabbitMQ themselves; the Rust toolchain comes from rustup,
# which is not a Debian package.
if ! command -v cargo >/dev/null 2>&1 && [ -f "$HOME/.cargo/env" ]; then
  # shellcheck disable=SC1091
  . "$HOME/.cargo/env"
fi
if ! command -v cargo >/dev/null 2>&1; then
  printf '%s\n' \
    "cargo not found: install the Rust toolchain first, e.g." \
    "  curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y && . \"\$HOME/.cargo/env\"" >&2
  exit 1
fi
