# syntax=docker/dockerfile:1.7
#
# One image for all three Cadre services; the pod picks the binary with `command`:
#   cadre-coordinator | cadre-agent-worker | cadre-projector [run|rebuild|migrate]
# Build: DOCKER_BUILDKIT=1 docker build -t cadre:dev .

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
WORKDIR /src
# sqlx runs without compile-time database checks; offline mode makes that explicit so a
# build never tries to reach a database.
ENV SQLX_OFFLINE=true \
    CARGO_TERM_COLOR=never
COPY . .
# Dependencies are cached in BuildKit cache mounts (registry, git checkouts, target dir) rather
# than in a layer: a source change recompiles only the workspace crates. The target dir is a
# cache mount, so the binaries are copied out of it in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked \
        -p cadre-coordinator -p cadre-agent-worker -p cadre-projector \
 && install -D -m 0755 -t /out \
        target/release/cadre-coordinator \
        target/release/cadre-agent-worker \
        target/release/cadre-projector

FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# ca-certificates: TLS to the managed Postgres, the LLM provider and the OTLP collector.
# Unpinned on purpose: the slim base is rebuilt with Debian security updates.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 cadre \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin cadre
# The projector's migrations are embedded in its binary (sqlx::migrate!): nothing else to copy.
COPY --from=builder /out/ /usr/local/bin/
LABEL org.opencontainers.image.title="cadre" \
      org.opencontainers.image.description="Cadre services: coordinator, agent-worker, projector" \
      org.opencontainers.image.licenses="Apache-2.0"
# Numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
ENV CADRE_LOG_FORMAT=json
# coordinator API, projector health, agent-worker health
EXPOSE 8080 9090 9091
# The binaries handle SIGTERM themselves (drain, then exit) and spawn no children, so they can
# run as PID 1 without an init.
CMD ["cadre-coordinator"]
