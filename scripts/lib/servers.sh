# Throwaway servers for the scripts (sourced by test.sh and chaos.sh): PostgreSQL, with TLS,
# on a free local port, in a directory the caller owns; apt-get installs what is missing.

# A step's heading, with the seconds since the script started (where the time goes).
say() { printf '\033[1m==> [%ss] %s\033[0m\n' "$SECONDS" "$*" >&2; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# can_install PACKAGE… : exits with the command to run when only root could install them.
can_install() {
  if [ "$(id -u)" != 0 ]; then
    echo "missing, and not root to install it: apt-get install $*" >&2
    exit 1
  fi
}

# install PACKAGE… : apt-get installs them, after one `apt-get update` for all.
install() {
  can_install "$@"
  say "not found here: installing $* with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q "$@" >/dev/null
}

pg_bindir() { command -v pg_config >/dev/null 2>&1 && pg_config --bindir; }

# The packages among PostgreSQL's server, openssl (the test server's certificate) and
# EXTRA… (`command:package` pairs, or `pkg:package` for a package without a command) that
# this machine lacks, one per line.
missing_packages() {
  local bin
  if ! bin=$(pg_bindir) || [ ! -x "$bin/initdb" ] || [ ! -x "$bin/pg_ctl" ]; then
    echo postgresql
  fi
  command -v openssl >/dev/null 2>&1 || echo openssl
  local pair
  for pair in "$@"; do
    case "$pair" in
      pkg:*) dpkg-query -W -f '${Status}' "${pair#pkg:}" 2>/dev/null | grep -q 'ok installed' \
               || echo "${pair#pkg:}" ;;
      *) command -v "${pair%%:*}" >/dev/null 2>&1 || echo "${pair#*:}" ;;
    esac
  done
}

# PostgreSQL's server binaries (Debian keeps them off the PATH; pg_config says where), and
# openssl: apt-get installs what is missing. Sets `bindir`.
ensure_postgres() {
  local missing
  missing=$(missing_packages)
  if [ -n "$missing" ]; then
    # shellcheck disable=SC2086
    install $missing
  fi
  bindir=$(pg_bindir)
}

port_is_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# start_postgres DIR [SETTINGS…]: a new cluster in DIR/data (owned by the postgres user),
# listening on 127.0.0.1 on a free port, with TLS (a self-signed certificate, as managed
# PostgreSQL requires `sslmode=require`). Sets `port`; `stop_postgres DIR` stops it,
# `restart_postgres DIR` starts it again with the same settings (after a crash).
start_postgres() {
  local dir=$1
  shift
  chmod 755 "$dir"
  [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
  as_postgres "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 \
    --locale=C.UTF-8 --no-sync >/dev/null
  as_postgres mkdir -p "$dir/sock"
  as_postgres openssl req -new -x509 -days 2 -nodes -subj /CN=127.0.0.1 \
    -keyout "$dir/data/server.key" -out "$dir/data/server.crt" >/dev/null 2>&1
  as_postgres chmod 600 "$dir/data/server.key"
  local try
  for try in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 30000))
    port_is_free "$port" || continue
    postgres_options="-p $port -c listen_addresses=127.0.0.1 \
      -c unix_socket_directories=$dir/sock -c max_connections=300 -c ssl=on $*"
    if as_postgres "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
        -o "$postgres_options" start >/dev/null; then
      return 0
    fi
  done
  echo "could not start PostgreSQL; its log follows" >&2
  cat "$dir/server.log" >&2 || true
  return 1
}

stop_postgres() {
  as_postgres "$bindir/pg_ctl" -D "$1/data" -m fast -w stop >/dev/null 2>&1 || true
}

restart_postgres() {
  as_postgres "$bindir/pg_ctl" -D "$1/data" -l "$1/server.log" -w -t 60 \
    -o "$postgres_options" start >/dev/null
}
