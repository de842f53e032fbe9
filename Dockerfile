# flash-coupons: build with the Rust toolchain, run on a slim Debian of the
# same release (bookworm), so the binaries' glibc matches the runtime's. The
# image holds the server and, beside it, flash-coupons-attack (the attack
# package's load tool), which `flash-coupons attack` runs.

# ---------------------------------------------------------------- build stage
FROM rust:1.95-slim-bookworm AS build
WORKDIR /app

# Dependencies get a layer of their own: it is rebuilt only when the
# manifests, Cargo.lock or patches/ change. A stub lib and binary stand in
# for the real sources of each package (the service's and attack/, both
# workspace members the build needs). patches/ holds our own
# chunked_transfer, which Cargo.toml's [patch.crates-io] puts in the
# crates.io one's place: the manifest does not resolve without it.
COPY Cargo.toml Cargo.lock ./
COPY attack/Cargo.toml ./attack/
COPY patches ./patches
RUN mkdir src attack/src \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > attack/src/main.rs \
    && touch src/lib.rs attack/src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src attack/src

# The real sources. schema.sql sits at the repository root because
# src/store/schema.rs embeds it with include_str!("../../schema.sql").
# COPY keeps the files' own (older) mtimes, which cargo would take as "not
# changed since the stub build": touching them forces the real build.
COPY schema.sql ./
COPY src ./src
COPY attack/src ./attack/src
RUN find src attack/src schema.sql -type f -exec touch {} + \
    && cargo build --release --locked \
    && install -m 0755 target/release/flash-coupons target/release/flash-coupons-attack \
        /usr/local/bin/

# -------------------------------------------------------------- runtime stage
FROM debian:bookworm-slim

# No packages to install: the binaries need only glibc and libgcc_s, both in
# the base image; the server talks to PostgreSQL without TLS, the attack
# plain HTTP. The health check below uses bash, head and grep, which are part
# of every Debian base image.
RUN groupadd --gid 10001 flash \
    && useradd --no-log-init --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin flash

# Side by side: `flash-coupons attack` runs the flash-coupons-attack beside
# its own executable.
COPY --from=build /usr/local/bin/flash-coupons /usr/local/bin/flash-coupons-attack \
    /usr/local/bin/

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
