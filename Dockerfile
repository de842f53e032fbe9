# flash-coupons: build with the Rust toolchain, run on a slim Debian of the
# same release (bookworm), so the binary's glibc matches the runtime's.

# ---------------------------------------------------------------- build stage
FROM rust:1.95-slim-bookworm AS build
WORKDIR /app

# Dependencies get a layer of their own: it is rebuilt only when Cargo.toml,
# Cargo.lock or patches/ change. A stub lib and binary stand in for the real
# sources. patches/ holds our own chunked_transfer, which Cargo.toml's
# [patch.crates-io] puts in the crates.io one's place: the manifest does not
# resolve without it.
COPY Cargo.toml Cargo.lock ./
COPY patches ./patches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

# The real sources. schema.sql sits at the repository root because
# src/store/schema.rs embeds it with include_str!("../../schema.sql").
# COPY keeps the files' own (older) mtimes, which cargo would take as "not
# changed since the stub build": touching them forces the real build.
COPY schema.sql ./
COPY src ./src
RUN find src schema.sql -type f -exec touch {} + \
    && cargo build --release --locked \
    && install -m 0755 target/release/flash-coupons /usr/local/bin/flash-coupons

# -------------------------------------------------------------- runtime stage
FROM debian:bookworm-slim

# No packages to install: the binary needs only glibc and libgcc_s, both in
# the base image, and talks to PostgreSQL without TLS. The health check below
# uses bash, head and grep, which are part of every Debian base image.
RUN groupadd --gid 10001 flash \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin flash

COPY --from=build /usr/local/bin/flash-coupons /usr/local/bin/flash-coupons

ENV LISTEN_ADDR=0.0.0.0:8080
EXPOSE 8080
USER 10001:10001

# No curl in this image: bash's /dev/tcp sends a plain HTTP/1.0 request to
# /healthz on the port LISTEN_ADDR names (8080 by default) and the check
# passes only on a 200 status line (the server answers 503 while the database
# does not). The start period covers DB_STARTUP_TIMEOUT_SECS (30 s default).
HEALTHCHECK --interval=10s --timeout=5s --start-period=45s --retries=3 \
    CMD ["bash", "-c", "port=\"${LISTEN_ADDR##*:}\"; exec 3<>\"/dev/tcp/127.0.0.1/${port:-8080}\" && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

# Exec form: the server is PID 1 and gets SIGTERM itself, finishes the
# requests in flight and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/flash-coupons"]
