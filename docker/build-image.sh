#!/usr/bin/env bash
# Build pgscore's server image on a machine without an image registry
# (CI, developers), from Debian packages and PyPI wheels only:
#
#   1. install docker.io and debootstrap with apt-get if missing;
#   2. use the daemon that DOCKER_HOST (or the default socket) names if it
#      answers, else start our own dockerd (no bridge, no iptables) in
#      $PGSCORE_DOCKER_DIR;
#   3. make the base image local/debian:bookworm with debootstrap from this
#      machine's own Debian mirror (skipped when the image exists);
#   4. download the runtime wheels (loader/runtime-requirements.txt) on the
#      host into a small staging build context;
#   5. docker build --network host --target server (classic builder), the
#      mirror's host name resolved here and passed with --add-host.
#
# Usage:   line="$(docker/build-image.sh)" && export "$line"    # stdout is only that line
#          ... docker run --network host -e POSTGRES_PASSWORD=... -e PGPORT=... pgscore/postgres:dev
#          docker/stop-dockerd.sh
# Env:     PGSCORE_DOCKER_DIR  our dockerd's socket, pidfile, data, log and the
#                              build context (default ${TMPDIR:-/tmp}/pgscore-docker)
#          PGSCORE_IMAGE       tag to build (default pgscore/postgres:dev)
#          PGSCORE_EXTRAS      server extras to build in (default onnx; empty for none)
#          PGSCORE_BASE_IMAGE  base image made here (default local/debian:bookworm)
#          DOCKER_HOST         a daemon to use instead of starting one
#          PYTHON              Python whose pip downloads the wheels (default python3)
# Output:  progress on stderr; the last line on stdout is DOCKER_HOST=...
# Status:  0 built; 75 no Docker daemon could start here; 1 any other failure
# Idempotent: a second run reuses the daemon, base image, wheels and build cache.
set -euo pipefail

t0=$SECONDS
log() { printf '[build-image %4ds] %s\n' "$((SECONDS - t0))" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Exit status 75 (EX_TEMPFAIL) means "no Docker daemon can run here": callers
# such as docker/test-docker.sh skip the Docker suite instead of failing.
no_daemon() { log "error: $*"; exit 75; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${PGSCORE_DOCKER_DIR:-${TMPDIR:-/tmp}/pgscore-docker}"
IMAGE="${PGSCORE_IMAGE:-pgscore/postgres:dev}"
# Server extras built into the image (docker/Dockerfile PGSCORE_EXTRAS); the tests score ONNX models.
EXTRAS="${PGSCORE_EXTRAS-onnx}"
BASE_IMAGE="${PGSCORE_BASE_IMAGE:-local/debian:bookworm}"
SUITE=bookworm          # the server image's Debian release (its Python is 3.11)
PYTHON="${PYTHON:-python3}"
mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"

need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root"; }

# ---- 1. tools ------------------------------------------------------------
install_tools() {
    local pkgs=()
    if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
        pkgs+=(docker.io)
    fi
    command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap debian-archive-keyring)
    [ ${#pkgs[@]} -gt 0 ] || return 0
    need_root "apt-get install ${pkgs[*]}"
    log "installing ${pkgs[*]} with apt-get"
    # Keep the packages' service scripts from starting a default dockerd
    # (with a bridge and iptables rules) during the install.
    local made_policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        made_policy=1
    fi
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
    [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
}

# ---- 2. daemon -------------------------------------------------------------
daemon_answers() { timeout 10 docker version --format '{{.Server.Version}}' >/dev/null 2>&1; }

own_dockerd_pid() {     # prints the PID of the dockerd we started, if it runs
    local pid
    [ -s "$DIR/dockerd.pid" ] || return 1
    pid="$(cat "$DIR/dockerd.pid")"
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] || return 1
    echo "$pid"
}

ensure_daemon() {
    if daemon_answers; then
        log "using the Docker daemon at ${DOCKER_HOST:-the default socket}"
        return
    fi
    export DOCKER_HOST="unix://$DIR/docker.sock"
    if ! own_dockerd_pid >/dev/null; then
        need_root "starting dockerd"
        [ ${#DIR} -le 90 ] || die "PGSCORE_DOCKER_DIR is too long for a unix socket path: $DIR"
        mkdir -p "$DIR/data" "$DIR/exec"
        [ -s "$DIR/daemon.json" ] || echo '{}' > "$DIR/daemon.json"
        log "starting dockerd in $DIR (log: $DIR/dockerd.log)"
        # setsid: the daemon outlives this script; docker/stop-dockerd.sh stops it.
        setsid dockerd --bridge=none --iptables=false --ip-masq=false \
            --config-file "$DIR/daemon.json" \
            --data-root "$DIR/data" --exec-root "$DIR/exec" \
            --pidfile "$DIR/dockerd.pid" -H "$DOCKER_HOST" \
            >>"$DIR/dockerd.log" 2>&1 </dev/null &
    fi
    local i
    for i in $(seq 1 120); do
        daemon_answers && { log "dockerd answers at $DOCKER_HOST"; return; }
        if [ "$i" -gt 4 ] && ! own_dockerd_pid >/dev/null; then
            tail -n 20 "$DIR/dockerd.log" >&2 || true
            no_daemon "dockerd exited"
        fi
        sleep 0.5
    done
    no_daemon "dockerd did not answer within 60 s (log: $DIR/dockerd.log)"
}

# ---- 3. base image -------------------------------------------------------------
# Prints "MAIN_URI SECURITY_URI" of the Debian archive this machine's apt uses.
debian_mirror() {
    local f=/etc/apt/sources.list.d/debian.sources out=""
    if [ -r "$f" ]; then
        out="$(awk '
            function flush(  n, i, s) {
                if (types ~ /(^|[ \t])deb([ \t]|$)/ && uri != "") {
                    n = split(suites, s, /[ \t]+/)
                    for (i = 1; i <= n; i++) {
                        if (s[i] ~ /-security$/) { if (sec == "") sec = uri }
                        else if (s[i] !~ /-/ && s[i] != "") { if (main == "") main = uri }
                    }
                }
                types = ""; uri = ""; suites = ""
            }
            /^[ \t]*$/   { flush(); next }
            /^Types:/    { types = $0; sub(/^Types:[ \t]*/, "", types) }
            /^URIs:/     { uri = $2 }
            /^Suites:/   { suites = $0; sub(/^Suites:[ \t]*/, "", suites) }
            END          { flush(); if (main != "") print main, sec }' "$f")"
    fi
    if [ -z "$out" ] && [ -r /etc/apt/sources.list ]; then
        out="$(sed -e 's/\[[^]]*\]//' /etc/apt/sources.list | awk '
            $1 == "deb" && $3 ~ /-security$/ && sec == "" { sec = $2 }
            $1 == "deb" && $3 !~ /-/ && main == "" { main = $2 }
            END { if (main != "") print main, sec }')"
    fi
    [ -n "$out" ] || die "no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list"
    echo "$out"
}

uri_host() { local h="${1#*://}"; h="${h%%/*}"; echo "${h%%:*}"; }

# --add-host arguments for the mirror's host names, resolved here: inside a
# build, a host-network container cannot use the host's resolver.
add_host_args() {
    local uri host ip seen=" "
    for uri in "$@"; do
        host="$(uri_host "$uri")"
        case "$seen" in *" $host "*) continue ;; esac
        seen="$seen$host "
        [[ "$host" =~ ^[0-9.]+$ ]] && continue
        ip="$(getent ahostsv4 "$host" | awk 'NR == 1 { print $1 }')"
        [ -n "$ip" ] || ip="$(getent hosts "$host" | awk 'NR == 1 { print $1 }')"
        [ -n "$ip" ] || die "cannot resolve the Debian mirror host $host"
        printf '%s\n' "--add-host=$host:$ip"
    done
}

remove_rootfs() {       # unmount anything debootstrap left mounted, then delete
    local root="$1" m mounts
    [ -e "$root" ] || return 0
    mapfile -t mounts < <(awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/mounts | sort -r)
    for m in "${mounts[@]}"; do
        umount -l "$m" || true
    done
    if awk -v r="$root/" 'index($2, r) == 1 { found = 1 } END { exit !found }' /proc/mounts; then
        die "$root still has mounts; not deleting it"
    fi
    rm -rf "$root"
}

ensure_base_image() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        log "base image $BASE_IMAGE exists"
        return
    fi
    need_root "debootstrap"
    local main sec rootfs="$DIR/rootfs"
    read -r main sec <<< "$MIRRORS"
    log "debootstrap --variant=minbase $SUITE from this machine's mirror $main"
    remove_rootfs "$rootfs"
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$main" >"$DIR/debootstrap.log" 2>&1 \
        || { tail -n 20 "$DIR/debootstrap.log" >&2; die "debootstrap failed (log: $DIR/debootstrap.log)"; }
    # The image's apt: the same archive, with updates and security.
    rm -f "$rootfs/etc/apt/sources.list"
    {
        printf 'Types: deb\nURIs: %s\nSuites: %s %s-updates\nComponents: main\n' "$main" "$SUITE" "$SUITE"
        printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
        if [ -n "$sec" ]; then
            printf '\nTypes: deb\nURIs: %s\nSuites: %s-security\nComponents: main\n' "$sec" "$SUITE"
            printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
        fi
    } > "$rootfs/etc/apt/sources.list.d/debian.sources"
    rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/archives/*.deb
    log "docker import $BASE_IMAGE"
    tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$BASE_IMAGE" >/dev/null
    remove_rootfs "$rootfs"
}

# ---- 4. build context --------------------------------------------------------
# The same layout as the repository, with only what the server target reads.
prepare_context() {
    local ctx="$DIR/context" req="$REPO/loader/runtime-requirements.txt" plats=() v stamp
    local onnx="$REPO/loader/runtime-onnx-requirements.txt" extras="$REPO/docker/runtime-extras.txt" reqs
    mkdir -p "$ctx/loader" "$ctx/docker/wheels"
    cp "$req" "$ctx/loader/runtime-requirements.txt"
    cp "$onnx" "$ctx/loader/runtime-onnx-requirements.txt"
    # The server extras (PGSCORE_EXTRAS, default onnx: the tests score ONNX
    # models) and a DBA's docker/runtime-extras.txt: their wheels too.
    reqs=(-r "$req")
    for v in $EXTRAS; do reqs+=(-r "$REPO/loader/runtime-$v-requirements.txt"); done
    rm -f "$ctx/docker/runtime-extras.txt"
    if [ -f "$extras" ]; then cp "$extras" "$ctx/docker/runtime-extras.txt"; reqs+=(-r "$extras"); fi
    cp "$REPO/docker/entrypoint.sh" "$ctx/docker/entrypoint.sh"
    chmod 755 "$ctx/docker/entrypoint.sh"
    # cp311 wheels for bookworm (glibc 2.36): any manylinux tag up to 2_36.
    for v in $(seq 36 -1 17); do plats+=(--platform "manylinux_2_${v}_x86_64"); done
    plats+=(--platform manylinux2014_x86_64)
    stamp="$( (cat "$req"; echo "$EXTRAS"; cat "$onnx"; cat "$extras" 2>/dev/null || true) | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$DIR/wheels.stamp" 2>/dev/null)" = "$stamp" ] && ls "$ctx"/docker/wheels/*.whl >/dev/null 2>&1; then
        log "runtime wheels already downloaded"
    else
        log "downloading the runtime wheels (cp311, manylinux) with $PYTHON -m pip"
        rm -f "$ctx"/docker/wheels/*.whl "$DIR/wheels.stamp"
        "$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
            --python-version 3.11 --implementation cp --abi cp311 "${plats[@]}" \
            -d "$ctx/docker/wheels" "${reqs[@]}" >&2
        echo "$stamp" > "$DIR/wheels.stamp"
    fi
    log "build context: $ctx ($(du -sh "$ctx" | cut -f1))"
}

# ---- main ------------------------------------------------------------------------
install_tools
ensure_daemon
MIRRORS="$(debian_mirror)"
read -r -a mirror_uris <<< "$MIRRORS"
add_hosts_lines="$(add_host_args "${mirror_uris[@]}")"
mapfile -t add_hosts <<< "$add_hosts_lines"
ensure_base_image
prepare_context

log "docker build $IMAGE (base $BASE_IMAGE)"
t_build=$SECONDS
# The classic builder: no BuildKit/buildx needed, and --network host works.
DOCKER_BUILDKIT=0 docker build --network host "${add_hosts[@]}" \
    --build-arg "BASE=$BASE_IMAGE" --build-arg "PGSCORE_EXTRAS=$EXTRAS" --target server -t "$IMAGE" \
    -f "$REPO/docker/Dockerfile" "$DIR/context" >&2
size="$(docker image inspect --format '{{.Size}}' "$IMAGE")"
log "built $IMAGE: $((size / 1000000)) MB, docker build $((SECONDS - t_build)) s, total $((SECONDS - t0)) s"
echo "DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock}"
