#!/usr/bin/env bash
# The whole test suite, on a real PostgreSQL, on SQLite and through a real NATS JetStream.
#
# Checks formatting, lints, the API documentation and single-backend builds; starts a
# throwaway PostgreSQL cluster and a throwaway JetStream server (installing PostgreSQL and
# nats-server with apt-get if they are missing), runs `cargo test --workspace` against them
# and against SQLite, runs the flagship example on both backends, and stops both servers on
# every exit path.
# Extra arguments go to `cargo test` (e.g. `bash scripts/test.sh unit_of_work`).
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/lib/servers.sh

# The checked queries build from the offline data in .sqlx/, never from a live database.
export SQLX_OFFLINE=true
# Four tests at once: most wait on the database, so this beats one per core (the heavy
# tests, CPU-bound, take turns two at a time whatever this says).
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}"
# CI builds from nothing, where incremental compilation only adds work.
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi

# What the servers need and this machine lacks (PostgreSQL, nats-server, and libfaketime,
# which the clock-skew test starts relays under) installs in the background while step 0
# compiles: on a fresh machine apt-get mostly waits on the network.
workdir=$(mktemp -d /tmp/keel-pg.XXXXXX)
install_pid=""
started=0
nats_pid=""
cleanup() {
  status=$?
  # apt-get is never interrupted: a half-done install leaves dpkg to repair.
  if [ -n "$install_pid" ]; then
    echo "waiting for apt-get to finish before exiting…" >&2
    wait "$install_pid" 2>/dev/null || true
  fi
  if [ -n "$nats_pid" ]; then
    kill "$nats_pid" 2>/dev/null || true
    wait "$nats_pid" 2>/dev/null || true
  fi
  if [ "$started" = 1 ]; then
    stop_postgres "$workdir"
  fi
  rm -rf "$workdir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

missing=$(missing_packages nats-server:nats-server pkg:libfaketime | xargs)
if [ -n "$missing" ]; then
  # Checked here too, so that a user without root learns it before the compile checks.
  # shellcheck disable=SC2086
  can_install $missing
  # shellcheck disable=SC2086
  install $missing >"$workdir/apt-get.log" 2>&1 &
  install_pid=$!
  say "installing $missing with apt-get, in the background"
fi

# 0. Formatting, lints, documentation, a check that a PostgreSQL-only build pulls in no
#    SQLite, and the build of everything the steps below run (full runs only).
if [ $# -eq 0 ]; then
  say "cargo fmt --check"
  cargo fmt --all --check
  say "cargo clippy (warnings denied)"
  cargo clippy -q --workspace --all-targets --features nats -- -D warnings
  say "cargo doc (missing docs and broken links denied)"
  RUSTDOCFLAGS="-D warnings" cargo doc -q --workspace --no-deps --features nats
  say "a PostgreSQL-only service builds no SQLite"
  if cargo tree -q -p keel -e normal --no-default-features --features postgres \
      | grep -q -e sqlx-sqlite -e libsqlite3; then
    echo "keel with only the postgres feature still depends on SQLite" >&2
    exit 1
  fi
  say "single-backend builds (postgres alone, sqlite alone) compile and lint clean"
  # The library alone, as a service builds it: the tests' and examples' dev-dependencies
  # would turn the other backend back on.
  for backend in postgres sqlite; do
    cargo clippy -q -p keel --no-default-features --features "$backend" -- -D warnings
  done
  # Every test, then the examples as step 4 runs them (the facade's features alone; the
  # root Cargo.toml aligns them with the workspace's, so this adds no compilation), while
  # apt-get may still be running.
  say "cargo build --all-targets, and the examples"
  cargo build -q --workspace --features nats --all-targets
  cargo build -q --features nats --examples
fi

# 1. The installs done.
if [ -n "$install_pid" ]; then
  say "waiting for apt-get"
  installed=0
  wait "$install_pid" || installed=$?
  install_pid=""
  if [ "$installed" != 0 ]; then
    echo "apt-get install $missing failed; its output follows" >&2
    cat "$workdir/apt-get.log" >&2
    exit 1
  fi
fi
bindir=$(pg_bindir)
# (grep reads the whole list: stopping at the first match could fail dpkg with SIGPIPE.)
if ! faketime=$(dpkg -L libfaketime 2>/dev/null | grep 'libfaketime\.so\.1$'); then
  echo "libfaketime is installed but its libfaketime.so.1 was not found (dpkg -L libfaketime)" >&2
  exit 1
fi
export KEEL_TEST_FAKETIME="${faketime%%$'\n'*}"

# 2. A throwaway cluster in a directory the postgres user owns, on a free port.
# Marked started first: a start that timed out may still bring the server up; stopping a
# server that is not running is harmless.
started=1
start_postgres "$workdir" -c fsync=off
say "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"

# Without TLS, but for the TLS test (which asks for `sslmode=require`): in a debug build,
# encrypting every message cost a sixth of the suite's CPU.
export KEEL_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres?sslmode=disable"
export KEEL_REQUIRE_POSTGRES=1
export KEEL_TEST_POSTGRES_TLS=1

# 2b. A throwaway JetStream server, its store in the same directory, on a free port.
for try in 1 2 3 4 5 6 7 8; do
  nats_port=$((20000 + RANDOM % 30000))
  port_is_free "$nats_port" || continue
  nats-server -js -a 127.0.0.1 -p "$nats_port" -sd "$workdir/nats" \
    >"$workdir/nats.log" 2>&1 &
  nats_pid=$!
  for wait in $(seq 1 50); do
    if ! port_is_free "$nats_port"; then break; fi
    sleep 0.1
  done
  if ! port_is_free "$nats_port" && kill -0 "$nats_pid" 2>/dev/null; then break; fi
  kill "$nats_pid" 2>/dev/null || true
  nats_pid=""
done
if [ -z "$nats_pid" ]; then
  echo "could not start nats-server; its log follows" >&2
  cat "$workdir/nats.log" >&2 || true
  exit 1
fi
say "nats-server $(nats-server --version | awk '{print $2}') on 127.0.0.1:$nats_port"
export KEEL_TEST_NATS_URL="nats://127.0.0.1:$nats_port"
export KEEL_REQUIRE_NATS=1

# 3. The suite, on both backends (tests name their backend: `…::postgres`, `…::sqlite`).
# `--features nats`: the facade's NATS integration and its tests (`tests/nats`). The
# integration tests are one binary (`tests/integration.rs`).
say "cargo test --workspace --features nats"
cargo test --workspace --features nats "$@"

# 3b. The integration suite again with a pool of exactly one connection: nothing inside a
#     unit of work may ever need a second one. (The NATS tests and the kill -9 test skip
#     themselves in this pass: nothing in them nests, and they are the suite's slowest.)
#     Handlers commit alone in this pass (group commit off; the pass above ran it on, the
#     default), so the suite holds both ways.
if [ $# -eq 0 ]; then
  say "integration tests with a pool of one connection, group commit off"
  # `--workspace`, as above: the same features, so nothing is rebuilt.
  KEEL_TEST_POOL_SIZE=1 KEEL_GROUP_COMMIT=off cargo test --workspace --features nats --test '*'
fi

# 3c. PostgreSQL restarting under a running relay. It restarts the shared cluster, so it
#     runs alone, after everything else that uses the server.
if [ $# -eq 0 ]; then
  say "relay across a PostgreSQL restart"
  if [ "$(id -u)" = 0 ]; then restart_as="runuser -u postgres --"; else restart_as=""; fi
  KEEL_TEST_PG_RESTART="$restart_as $bindir/pg_ctl -D $workdir/data -l $workdir/server.log -m fast -w -t 30 restart" \
    cargo test --workspace --features nats --test integration -- --ignored --exact durability::postgres::restart_postgres::the_relay_survives_a_postgres_restart
fi

# 4. The flagship example, as a user runs it: SQLite by default, then PostgreSQL. With the
#    `nats` feature, as step 0 built them: it only adds a module these examples do not
#    use, and building the facade once more without it would cost most of a minute.
if [ $# -eq 0 ]; then
  say "example assessment_completion on SQLite"
  cargo run -q --features nats --example assessment_completion
  say "example assessment_completion on PostgreSQL"
  as_postgres "$bindir/createdb" -h 127.0.0.1 -p "$port" -U postgres keel_example
  DATABASE_URL="postgres://postgres@127.0.0.1:$port/keel_example" \
    cargo run -q --features nats --example assessment_completion
  say "example nats_services: two services through JetStream"
  NATS_URL="$KEEL_TEST_NATS_URL" cargo run -q --features nats --example nats_services
  say "example likes on SQLite, then on PostgreSQL"
  cargo run -q --features nats --example likes
  DATABASE_URL="postgres://postgres@127.0.0.1:$port/keel_example" \
    cargo run -q --features nats --example likes
fi
say "all tests passed"
