# llmtrace-node image: a multi-stage build, then a small Debian runtime that runs
# the binary as an unprivileged user. Not built on the development machine (it
# has no Docker engine); see docs/deployment.md.
#
#   docker build -t llmtrace-node .
#   docker run --rm -p 8080:8080 llmtrace-node

FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p llmtrace-node \
    && install -m 0755 target/release/llmtrace-node /llmtrace-node

FROM debian:bookworm-slim
# No C libraries beyond glibc: nothing to install (TLS is rustls, compiled
# in). The public API speaks plain HTTP; terminate TLS at the load balancer.
# The cluster port needs LLMTRACE_CLUSTER_SECRET (it listens on every
# interface): node-to-node requests carry it and gossip is sealed with it;
# LLMTRACE_CLUSTER_TLS_CERT, LLMTRACE_CLUSTER_TLS_KEY and LLMTRACE_CLUSTER_TLS_CA
# add mutual TLS (docs/deployment.md).
RUN useradd --system --uid 10001 --user-group --no-create-home \
        --shell /usr/sbin/nologin llmtrace
COPY --from=build /llmtrace-node /usr/local/bin/llmtrace-node
USER 10001:10001
# Public API on every interface; the admin listener stays on loopback; the
# cluster port carries node-to-node RPC (TCP) and gossip (UDP). With a wildcard
# cluster listen address, set LLMTRACE_CLUSTER_ADVERTISE to an address peers reach.
ENV LLMTRACE_LISTEN=0.0.0.0:8080 \
    LLMTRACE_ADMIN_LISTEN=127.0.0.1:9090 \
    LLMTRACE_CLUSTER_LISTEN=0.0.0.0:7946 \
    LLMTRACE_LOG_FORMAT=json
EXPOSE 8080 7946/tcp 7946/udp
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/llmtrace-node"]
