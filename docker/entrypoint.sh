#!/usr/bin/env bash
# Entrypoint of pgscore's server image (docker/Dockerfile).
#
# Environment, as in the official postgres image:
#   POSTGRES_PASSWORD          superuser password (required unless
#                              POSTGRES_HOST_AUTH_METHOD=trust)
#   POSTGRES_USER              superuser name (default postgres)
#   POSTGRES_DB                database created on first start (default: the user's name)
#   POSTGRES_PASSWORD_FILE, POSTGRES_USER_FILE, POSTGRES_DB_FILE  read from files
#   POSTGRES_HOST_AUTH_METHOD  auth of TCP connections (default scram-sha-256)
#   POSTGRES_INITDB_ARGS       extra initdb arguments
#   PGPORT                     port (default 5432; postgres reads it itself)
#   PGDATA                     data directory (default /var/lib/postgresql/data)
# and pgscore's own:
#   POSTGRES_LISTEN_ADDRESSES  listen_addresses (default '*'), e.g. 127.0.0.1
#                              with --network host
#
# TCP connections need the password, from loopback too (the official image
# trusts loopback, which host networking would open to the whole machine);
# the local socket inside the container is trusted.
#
# On the official image this only adds the settings above and hands over to
# its docker-entrypoint.sh. On a bare Debian base it runs initdb itself.
set -Eeuo pipefail

first="${1:-}"
if [ "${first:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

if [ "${1:-}" = postgres ]; then
    if [ -n "${POSTGRES_LISTEN_ADDRESSES:-}" ]; then
        set -- "$@" -c "listen_addresses=${POSTGRES_LISTEN_ADDRESSES}"
    fi
    if [ "${POSTGRES_HOST_AUTH_METHOD:-}" != trust ]; then
        export POSTGRES_INITDB_ARGS="--auth-host=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256} ${POSTGRES_INITDB_ARGS:-}"
    fi
fi

if [ -x /usr/local/bin/docker-entrypoint.sh ]; then
    exec /usr/local/bin/docker-entrypoint.sh "$@"
fi

# ---- bare Debian base ----------------------------------------------------
if [ "${1:-}" != postgres ]; then
    exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    chmod 3777 /var/run/postgresql
    export HOME=/var/lib/postgresql
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

export LANG="${LANG:-C.UTF-8}"
for var in POSTGRES_PASSWORD POSTGRES_USER POSTGRES_DB; do     # VAR_FILE: docker secrets
    file_var="${var}_FILE"
    if [ -n "${!file_var:-}" ]; then
        [ -z "${!var:-}" ] || { echo "error: both $var and $file_var are set" >&2; exit 1; }
        printf -v "$var" '%s' "$(< "${!file_var}")"
    fi
done
POSTGRES_USER="${POSTGRES_USER:-postgres}"
POSTGRES_DB="${POSTGRES_DB:-$POSTGRES_USER}"
auth="${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}"

wants_help() {          # postgres --help, --version: no initdb
    local arg
    for arg; do
        case "$arg" in -'?'|--help|--describe-config|-V|--version) return 0 ;; esac
    done
    return 1
}

if [ ! -s "$PGDATA/PG_VERSION" ] && ! wants_help "$@"; then
    if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
        echo "error: the database is uninitialized and POSTGRES_PASSWORD is not set" \
             "(set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow all connections without a password)" >&2
        exit 1
    fi
    pwfile=""
    if [ -n "${POSTGRES_PASSWORD:-}" ]; then
        pwfile="$(umask 077 && mktemp)"
        printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    fi
    # POSTGRES_INITDB_ARGS is split on spaces, as in the official image.
    # shellcheck disable=SC2086
    initdb --username="$POSTGRES_USER" ${pwfile:+--pwfile="$pwfile"} \
        --encoding=UTF8 --locale="$LANG" --auth-local=trust ${POSTGRES_INITDB_ARGS:-}
    [ -z "$pwfile" ] || rm -f "$pwfile"
    printf "\nlisten_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
    printf '\nhost all all all %s\n' "$auth" >> "$PGDATA/pg_hba.conf"

    shopt -s nullglob
    scripts=(/docker-entrypoint-initdb.d/*)
    if [ "$POSTGRES_DB" != postgres ] || [ ${#scripts[@]} -gt 0 ]; then
        # A temporary server on the socket only, as the official image does.
        pg_ctl -D "$PGDATA" -o "-c listen_addresses='' -p ${PGPORT:-5432}" -w start
        psql=(psql -v ON_ERROR_STOP=1 --no-password --no-psqlrc --username "$POSTGRES_USER")
        if [ "$POSTGRES_DB" != postgres ]; then
            "${psql[@]}" --dbname postgres -v db="$POSTGRES_DB" <<< 'CREATE DATABASE :"db";'
        fi
        for f in "${scripts[@]}"; do
            case "$f" in
                *.sql) echo "$0: running $f" >&2; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
                *.sh)  echo "$0: running $f" >&2; bash "$f" ;;
                *)     echo "$0: ignoring $f (only *.sql and *.sh)" >&2 ;;
            esac
        done
        pg_ctl -D "$PGDATA" -m fast -w stop
    fi
fi

exec "$@"
