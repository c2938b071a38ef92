"""`pgscore db start`: the embedded throwaway server, on a port of its own."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from pgscore.dev.localdb import LocalDatabaseError, local_database, running_servers
from tests.conftest import own_server_folder


@pytest.fixture
def own_server():
    """An embedded server in a folder of its own that the postgres OS user can
    reach, with the shared server's runtime folder linked in (no pip install)."""
    folder = own_server_folder("pgscore-port-")
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


def test_start_on_another_port_than_the_running_one_is_refused(own_server):
    own_server.start()
    port = own_server.state()["port"]
    other = port + 1
    with pytest.raises(LocalDatabaseError) as refused:
        own_server.start(port=other)
    message = str(refused.value)
    assert message.startswith(f"the local server in {own_server.dir} already runs on port {port}, not {other}: ")
    assert f"`pgscore db stop --dir {own_server.dir}`" in message
    assert own_server.is_running() and own_server.state()["port"] == port  # left as it was
    assert own_server.start(port=port) == own_server.dsn()  # its own port: just the DSN
    cli = subprocess.run([str(Path(sys.executable).with_name("pgscore")), "db", "start", "--dir", str(own_server.dir),
                          "--port", str(other)], capture_output=True, text=True)
    assert cli.returncode == 1 and cli.stdout == ""
    assert cli.stderr == f"pgscore: {message}\n"


def test_a_new_server_says_where_it_goes_and_where_others_run(server, own_server, capsys):
    before = set(running_servers())
    if server["target"] == "local" and not os.environ.get("PGSCORE_TEST_DSN"):
        assert before, "the tests' own local server runs: it is one to mention"
    own_server.start()
    said = capsys.readouterr().err
    assert (f"pgscore: creating a new local server in {own_server.dir} "
            "(set PGSCORE_HOME or pass --dir to use another folder)") in said
    for folder, port in before & set(running_servers()):  # (others' servers may come and go meanwhile)
        if folder == own_server.dir:
            continue
        assert (f"pgscore: a pgscore local server already runs in {folder} on port {port}: to use it instead, "
                f"pass --dir {folder} or set PGSCORE_HOME={folder}") in said
    assert (own_server.dir, own_server.state()["port"]) in running_servers()
    own_server.stop()
    own_server.start()  # its own folder again: nothing new to announce
    assert "creating a new local server" not in capsys.readouterr().err
