"""PostgreSQL from pgscore's Docker image (docker/Dockerfile), for the tests.

Build the image first (on a machine without an image registry):

    line="$(docker/build-image.sh)" && export "$line"    # DOCKER_HOST=...
    pytest -m docker
    docker/stop-dockerd.sh

The container runs with host networking (the daemon docker/build-image.sh
starts has no bridge network), so the server listens on 127.0.0.1 at a free
port chosen here and passed as PGPORT.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from collections.abc import Iterator

DEFAULT_IMAGE = "pgscore/postgres:dev"
READY_TIMEOUT_S = 60.0


def docker_unavailable_reason(image: str | None = DEFAULT_IMAGE) -> str | None:
    """One line saying why the Docker tests cannot run here, or None.

    Checks that a daemon answers (DOCKER_HOST or the default socket) and,
    unless `image` is None, that the image has been built on it.
    """
    try:
        import docker  # the SDK testcontainers uses (docker.errors comes with it)
    except ImportError as exc:
        return f"the docker Python package is not installed ({exc})"
    where = os.environ.get("DOCKER_HOST") or "the default Docker socket"
    try:
        client = docker.from_env(timeout=5)
    except docker.errors.DockerException as exc:
        return f"no Docker daemon answers at {where}: {_first_line(exc)}"
    try:
        client.ping()
        if image is not None:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                return f"image {image} not found at {where}: build it with docker/build-image.sh"
    except Exception as exc:  # noqa: BLE001 - any failure means "cannot run"
        return f"no Docker daemon answers at {where}: {_first_line(exc)}"
    finally:
        client.close()
    return None


@contextlib.contextmanager
def docker_postgres(image: str = DEFAULT_IMAGE, timeout: float = READY_TIMEOUT_S) -> Iterator[str]:
    """Start `image` and yield a superuser DSN; remove the container on exit.

    The DSN is postgresql://postgres:PASSWORD@127.0.0.1:PORT/postgres, with a
    random password. Ready means pg_isready answers over TCP inside the
    container (so not the entrypoint's socket-only init server) and a real
    psycopg connection succeeds.
    """
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # Ryuk needs a registry
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    if os.environ["TESTCONTAINERS_RYUK_DISABLED"].lower() == "true":
        testcontainers_config.ryuk_disabled = True

    for attempt in range(3):
        port = _free_port()
        password = secrets.token_hex(16)
        container = (
            DockerContainer(image)
            .with_kwargs(network_mode="host")
            .with_env("POSTGRES_PASSWORD", password)
            .with_env("PGPORT", str(port))
            .with_env("POSTGRES_LISTEN_ADDRESSES", "127.0.0.1")
        )
        container.start()
        try:
            dsn = f"postgresql://postgres:{password}@127.0.0.1:{port}/postgres"
            try:
                _wait_ready(container, port, dsn, timeout)
            except _PortTaken:
                if attempt == 2:
                    raise
                continue  # another process took the port between probe and bind
            yield dsn
            return
        finally:
            container.stop()


class _PortTaken(RuntimeError):
    pass


def _wait_ready(container, port: int, dsn: str, timeout: float) -> None:
    import docker
    import psycopg

    deadline = time.monotonic() + timeout
    isready = ["pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", "postgres"]
    wrapped = container.get_wrapped_container()
    while True:
        wrapped.reload()
        if wrapped.status in ("exited", "dead"):
            logs = _logs(container)
            if "Address already in use" in logs or "could not bind" in logs:
                raise _PortTaken(logs)
            raise RuntimeError(f"container of {container.image} exited during startup:\n{logs}")
        try:
            code, _ = container.exec(isready)
        except docker.errors.APIError:
            code = -1  # the container is stopping; its status tells on the next turn
        if code == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"pg_isready did not succeed within {timeout:.0f} s:\n{_logs(container)}")
        time.sleep(0.2)
    while True:
        try:
            with psycopg.connect(dsn, connect_timeout=5) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no psycopg connection within {timeout:.0f} s: {exc}\n{_logs(container)}") from exc
            time.sleep(0.2)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _logs(container, lines: int = 40) -> str:
    try:
        out, err = container.get_logs()
    except Exception as exc:  # noqa: BLE001
        return f"(no logs: {exc})"
    text = (out or b"").decode(errors="replace") + (err or b"").decode(errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
