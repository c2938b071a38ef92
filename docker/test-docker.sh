#!/usr/bin/env bash
# The Docker half of `make test`: build the server image (docker/build-image.sh,
# our own dockerd when none answers), run the SQL-level tests against a
# container of it (pytest -m docker), then stop the dockerd we started.
# Where no Docker daemon can start, say so in one line and skip: the rest of
# the tests still count.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTEST="${PYTEST:-.venv/bin/python -m pytest}"

status=0
line="$(bash docker/build-image.sh)" || status=$?
if [ "$status" -eq 75 ]; then
    echo "docker tests skipped: no Docker daemon can start on this machine (see the build log above)"
    exit 0
fi
[ "$status" -eq 0 ] || exit "$status"
export "${line?}"

cleanup() { bash docker/stop-dockerd.sh || true; }
trap cleanup EXIT
export TESTCONTAINERS_RYUK_DISABLED=true
# shellcheck disable=SC2086
$PYTEST -m docker -p no:cacheprovider "$@"
