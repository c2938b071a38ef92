"""`pgscore db start`: the embedded throwaway server, on a port of its own."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from pathlib import Path

import psycopg
import pytest
from pgscore.localdb import LocalDatabaseError, local_database


@pytest.fixture
def own_server():
    """An embedded server in a folder of its own that the postgres OS user can
    reach, with the shared server's runtime folder linked in (no pip install)."""
    folder = Path(tempfile.mkdtemp(prefix="pgscore-port-", dir="/tmp"))
    folder.chmod(0o755)
    shared = local_database(os.environ.get("PGSCORE_TEST_HOME")).state().get("runtime")
    if shared and (Path(shared) / ".complete").exists():
        (folder / "runtime").mkdir()
        (folder / "runtime" / Path(shared).name).symlink_to(shared, target_is_directory=True)
    local = local_database(folder)
    try:
        yield local
    finally:
        local.stop()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_server_whose_port_was_taken_meanwhile_moves_to_a_free_one(own_server, capsys):
    own_server.start()
    port = own_server.state()["port"]
    own_server.stop()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:  # another checkout's server, say
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        dsn = own_server.start()
        moved = own_server.state()["port"]
        with psycopg.connect(dsn) as conn:
            assert conn.execute("SELECT current_setting('port')::int").fetchone()[0] == moved
        own_server.stop()
        # A port asked for by name is not replaced: the error names it.
        with pytest.raises(LocalDatabaseError, match=f"port {port} on 127.0.0.1 is in use"):
            own_server.start(port=port)
    assert moved != port
    assert f"port {port} on 127.0.0.1 is in use; the local server moves to port {moved}" in capsys.readouterr().err
