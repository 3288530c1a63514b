# syntax=docker/dockerfile:1
#
# Tollgate: a release build in the official Rust image, run from
# debian:bookworm-slim as an unprivileged user.
#
#   docker build -t tollgate --build-arg TOLLGATE_COMMIT="$(git rev-parse --short HEAD)" .
#   docker run --rm -v "$PWD/config:/etc/tollgate:ro" -p 8080:8080 tollgate
#
# The config is mounted at /etc/tollgate/gateway.yaml (relative paths in it
# resolve against /etc/tollgate). Its listeners must bind 0.0.0.0 (or ::) to
# be reachable from outside the container.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# .git is not copied: `tollgate --version` shows this commit (else "unknown").
ARG TOLLGATE_COMMIT=
ENV TOLLGATE_COMMIT=${TOLLGATE_COMMIT}
# Registry and target caches survive between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tollgate \
    && strip --strip-debug target/release/tollgate \
    && install -m 0755 target/release/tollgate /usr/local/bin/tollgate

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin tollgate \
    && mkdir -p /etc/tollgate
COPY --from=build /usr/local/bin/tollgate /usr/local/bin/tollgate
USER tollgate:tollgate
EXPOSE 8080 8443 9901
# SIGTERM drains (timeouts.shutdown_grace, 30 s by default): give
# `docker stop -t` at least that long.
STOPSIGNAL SIGTERM
ENTRYPOINT ["tollgate"]
CMD ["serve", "-c", "/etc/tollgate/gateway.yaml"]
