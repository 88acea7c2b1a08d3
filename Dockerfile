# walcast container image.
#
#   docker build -t walcast .
#   docker run --rm -p 8080:8080 \
#     -e DATABASE_URL=postgres://walcast:secret@db:5432/app \
#     -e RABBITMQ_URL=amqp://walcast:secret@rabbitmq:5672/%2f \
#     -e WALCAST_RABBITMQ_QUEUE=walcast.gateway.1 \
#     walcast                     # = walcast run (all roles)
#   docker run --rm ... walcast check      # preflight
#   docker run --rm ... walcast setup      # schema, publication, slot
#
# Configuration comes from the environment (WALCAST_<SECTION>_<KEY>,
# DATABASE_URL, RABBITMQ_URL); see config.toml for every key. Mount a file
# and set WALCAST_CONFIG=/path to use one instead.

# --- build -------------------------------------------------------------------
FROM rust:1-bookworm AS builder
WORKDIR /build

# Dependencies first, against placeholder sources: this layer is reused
# until Cargo.toml or Cargo.lock change, so editing src/ rebuilds walcast only.
# Cargo.toml must load, so every target it declares ([[bench]] decoder)
# needs a file at its path; the tests (tests/it/, tests/structure.rs) are
# found by cargo, not declared, and the image needs none of them.
COPY Cargo.toml Cargo.lock ./
# Placeholder sources (scripts/check-docker-context.sh runs this step too).
RUN mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/decoder.rs
RUN cargo build --release --locked \
    && rm -rf src benches target/release/.fingerprint/walcast-* \
              target/release/deps/walcast-* target/release/deps/libwalcast-* \
              target/release/walcast

# sql/, dashboard/ and walcast-client (clients/js) are compiled in
# (include_str!, include_bytes!), so the image needs no files beside the
# binary. benches/ only for the manifest: `cargo build` does not compile
# it. No tests/: editing a test does not invalidate this layer.
COPY sql ./sql
COPY benches ./benches
COPY dashboard ./dashboard
COPY clients/js/walcast-client.js ./clients/js/walcast-client.js
COPY src ./src
# touch: COPY keeps the files' old mtimes, which could look older than the
# placeholder build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && cp target/release/walcast /usr/local/bin/walcast

# --- runtime -----------------------------------------------------------------
FROM debian:bookworm-slim

# ca-certificates for TLS to managed services; curl for HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 walcast \
    && useradd --system --uid 10001 --gid walcast --no-create-home \
               --home-dir /nonexistent --shell /usr/sbin/nologin walcast

COPY --from=builder /usr/local/bin/walcast /usr/local/bin/walcast

# No config.toml in the working directory: settings come from the
# environment. Listen on every interface inside the container.
# /var/lib/walcast is walcast's own: the replay log lives there when
# WALCAST_FANOUT_REPLAY_DIR points into it (docker-compose.yml mounts a
# volume on it, which takes this ownership when first created).
RUN mkdir -p /var/lib/walcast && chown walcast:walcast /var/lib/walcast
WORKDIR /var/lib/walcast
ENV WALCAST_HTTP_LISTEN=0.0.0.0:8080

USER walcast:walcast
EXPOSE 8080

# Liveness only (/healthz): /readyz goes 503 while RabbitMQ or Postgres is
# away, and restarting walcast would not bring them back. Follows the port
# of WALCAST_HTTP_LISTEN.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD curl -fsS "http://127.0.0.1:${WALCAST_HTTP_LISTEN##*:}/healthz" > /dev/null || exit 1

ENTRYPOINT ["walcast"]
CMD ["run"]
