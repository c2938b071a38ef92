#!/usr/bin/env bash
# Stop the dockerd that docker/build-image.sh started in $PGSCORE_DOCKER_DIR:
# remove that daemon's containers, then stop it by the PID in its pidfile
# (and its own containerd, by its pidfile, should it outlive the daemon).
# Nothing else is touched; a daemon that DOCKER_HOST named is never stopped.
#
# Usage:  docker/stop-dockerd.sh            stop; keep images and build cache
#         docker/stop-dockerd.sh --purge    stop, then delete $PGSCORE_DOCKER_DIR
# Env:    PGSCORE_DOCKER_DIR (default ${TMPDIR:-/tmp}/pgscore-docker)
# Idempotent: with no daemon running it only says so.
set -euo pipefail

t0=$SECONDS
log() { printf '[stop-dockerd %3ds] %s\n' "$((SECONDS - t0))" "$*" >&2; }

DIR="${PGSCORE_DOCKER_DIR:-${TMPDIR:-/tmp}/pgscore-docker}"
purge=""
case "${1:-}" in
    --purge) purge=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

pid_of() {              # pid_of PIDFILE COMM: the PID if that process runs
    local pid
    [ -s "$1" ] || return 1
    pid="$(cat "$1")"
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] || return 1
    echo "$pid"
}

stop_pid() {            # stop_pid PID NAME: TERM, wait up to 30 s, then KILL
    local pid="$1" _
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || { log "$2 ($pid) stopped"; return 0; }
        sleep 0.5
    done
    log "$2 ($pid) still running after 30 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
}

if pid="$(pid_of "$DIR/dockerd.pid" dockerd)"; then
    export DOCKER_HOST="unix://$DIR/docker.sock"
    ids="$(timeout 20 docker ps -aq 2>/dev/null || true)"
    if [ -n "$ids" ]; then
        log "removing containers: $(echo "$ids" | tr '\n' ' ')"
        # shellcheck disable=SC2086
        timeout 60 docker rm -f -v $ids >/dev/null || log "could not remove every container"
    fi
    stop_pid "$pid" dockerd
else
    log "no dockerd of ours is running (pidfile $DIR/dockerd.pid)"
fi
if pid="$(pid_of "$DIR/exec/containerd/containerd.pid" containerd)"; then
    stop_pid "$pid" containerd
fi
rm -f "$DIR/dockerd.pid"

# What the stopped daemon left mounted under its folders (e.g. exec/netns/default).
if [ -d "$DIR" ] && ! pid_of "$DIR/dockerd.pid" dockerd >/dev/null; then
    mapfile -t mounts < <(awk -v d="$DIR/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r)
    for m in "${mounts[@]}"; do
        umount "$m" 2>/dev/null || umount -l "$m" || log "could not unmount $m"
    done
fi

if [ -n "$purge" ] && [ -d "$DIR" ]; then
    [ -d "$DIR/data" ] || [ -d "$DIR/context" ] \
        || { log "$DIR does not look like build-image.sh's folder; not deleting it"; exit 1; }
    if awk -v d="$DIR/" 'index($2, d) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        log "$DIR still has mounts; not deleting it"
        exit 1
    fi
    log "deleting $DIR"
    rm -rf "$DIR"
fi
log "done in $((SECONDS - t0)) s"
