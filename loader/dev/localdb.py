"""`pgscore db start|stop|status`: a throwaway PostgreSQL for development,
the demo and the tests.

initdb on first use, listening on 127.0.0.1 only, password authentication,
plpython3u available and the pinned runtime on the postmaster's PYTHONPATH
(with one BLAS thread per backend). As root, the server runs as the
``postgres`` OS user, since PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psycopg

from . import runtime
from ..errors import LocalDatabaseError

DEFAULT_DIR = Path(os.environ.get("PGSCORE_HOME", ".pgscore"))
DEFAULT_PORT = 54329
DATABASE = "pgscore"
SUPERUSER = "postgres"
# The procedural languages every score runs in: preloaded, the postmaster
# loads and links them once and each backend inherits them (the Docker image
# sets the same: docker/Dockerfile).
PRELOAD_LIBRARIES = "plpgsql,plpython3"
CONF_MARK = "# written by pgscore db start"


@dataclass(frozen=True)
class LocalDatabase:
    dir: Path

    @property
    def data(self) -> Path:
        return self.dir / "data"

    @property
    def sockets(self) -> Path:
        return self.dir / "run"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def log_file(self) -> Path:
        return self.data / "server.log"

    def state(self) -> dict:
        if not self.state_file.exists():
            return {}
        return json.loads(self.state_file.read_text())

    def dsn(self, database: str = DATABASE) -> str:
        state = self.state()
        return f"postgresql://{SUPERUSER}:{state['password']}@127.0.0.1:{state['port']}/{database}"

    def is_running(self) -> bool:
        if not self.data.exists():
            return False
        result = self._run([self.program("pg_ctl"), "-D", str(self.data), "status"], check=False)
        return result.returncode == 0

    def start(self, port: int | None = None) -> str:
        """Starts the server (initialising it on first use) and returns its DSN.

        A running server is left alone, unless the pinned runtime or its
        extras (``runtime-extras.txt`` in its folder: ``pgscore runtime add``)
        changed since it started: then it restarts on the new one.
        """
        bindir = self._bindir()
        plpython = bindir.parent / "lib" / "plpython3.so"
        if not plpython.exists():
            raise LocalDatabaseError(
                f"PL/Python is not installed for {bindir.parent} ({plpython} is missing): "
                f"run `apt-get install postgresql-{bindir.parent.name} postgresql-plpython3-{bindir.parent.name}` "
                "(or `make setup`), or use the Docker image (docker/README in README.md)"
            )
        running = self.is_running()
        if running and port and port != self.state().get("port"):
            raise LocalDatabaseError(
                f"the local server in {self.dir} already runs on port {self.state().get('port')}, not {port}: "
                f"leave out --port to use it, or stop it first (`pgscore db stop{self._dir_option()}`) "
                f"to move it to port {port}"
            )
        if not (self.data / "PG_VERSION").exists():
            self._announce_new_server()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        python_version = runtime.server_python_version(plpython)
        runtime_dir = runtime.install(self.dir / "runtime", python_version)
        extras_dir = runtime.install_extras(self.dir / "runtime", python_version,
                                            runtime.extras_text(self.dir / runtime.EXTRAS_FILE))
        extras = str(extras_dir.resolve()) if extras_dir else None
        state = self.state()
        if running:
            if state.get("runtime") != str(runtime_dir.resolve()) or state.get("runtime_extras") != extras:
                print("pgscore: the pinned runtime changed; restarting the local server on it", file=sys.stderr)
            elif self._settings_changed(state["port"]):
                print("pgscore: the local server's settings changed (docs/migrations.md); restarting it", file=sys.stderr)
            else:
                return self.dsn()
            self.stop()
        if port and not _port_free(port):
            raise LocalDatabaseError(f"port {port} on 127.0.0.1 is in use: stop what listens there or choose another port")
        if not (self.data / "PG_VERSION").exists():
            state = self._initdb(port or state.get("port") or _free_port(DEFAULT_PORT))
        elif port and port != state.get("port"):
            state["port"] = port  # written to the settings below, saved with the state
        elif not port and not _port_free(state["port"]):
            # Taken since this server last ran (by another checkout's server,
            # say): a throwaway server moves, and dsn() follows the state file.
            moved = _free_port(DEFAULT_PORT)
            print(f"pgscore: port {state['port']} on 127.0.0.1 is in use; the local server moves to port {moved}",
                  file=sys.stderr)
            state["port"] = moved
        state["runtime"] = str(runtime_dir.resolve())
        state["runtime_extras"] = extras  # after the base runtime on PYTHONPATH (pgscore runtime add)
        self.state_file.write_text(json.dumps(state))
        self.state_file.chmod(0o600)
        env = dict(os.environ, PYTHONPATH=":".join(filter(None, [state["runtime"], extras])),
                   OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env.pop("PYTHONHOME", None)
        # Every start writes the settings: a new server's, a moved one's port, and
        # today's for a server an older pgscore made.
        self._write_conf(state["port"])
        self._run([self.program("pg_ctl"), "-D", str(self.data), "-l", str(self.log_file), "-w", "-t", "60", "start"],
                  env=env)
        self._create_database()
        return self.dsn()

    def _announce_new_server(self) -> None:
        """Says, before a new server is made, which folder it goes to and
        where pgscore servers already run: a folder is chosen by the current
        directory (./.pgscore), so running pgscore from another folder makes
        another server without this."""
        print(f"pgscore: creating a new local server in {self.dir} "
              "(set PGSCORE_HOME or pass --dir to use another folder)", file=sys.stderr)
        for folder, port in running_servers():
            if folder != self.dir:
                where = f" on port {port}" if port else ""
                print(f"pgscore: a pgscore local server already runs in {folder}{where}: to use it instead, "
                      f"pass --dir {folder} or set PGSCORE_HOME={folder}", file=sys.stderr)

    def _dir_option(self) -> str:
        """' --dir DIR' unless DIR is the folder pgscore picks by itself."""
        return "" if self.dir == DEFAULT_DIR.resolve() else f" --dir {self.dir}"

    def stop(self) -> bool:
        """Stops the server; returns False when it was not running."""
        if not self.is_running():
            return False
        self._run([self.program("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"])
        return True

    def _initdb(self, port: int) -> dict:
        password = secrets.token_urlsafe(18)
        for folder in (self.data, self.sockets):
            folder.mkdir(parents=True, exist_ok=True)
            self._own(folder)
        self.data.chmod(0o700)
        pwfile = self.dir / ".initdb-password"
        pwfile.write_text(password + "\n")
        self._own(pwfile)
        try:
            self._run([self.program("initdb"), "-D", str(self.data), "-U", SUPERUSER, "-E", "UTF8", "--locale=C.UTF-8",
                       "--auth-host=scram-sha-256", "--auth-local=scram-sha-256", f"--pwfile={pwfile}"])
        finally:
            pwfile.unlink(missing_ok=True)
        state = {"port": port, "password": password}  # its settings: written by start()
        self.state_file.write_text(json.dumps(state))
        self.state_file.chmod(0o600)
        return state

    def _settings(self, port: int) -> dict[str, str]:
        return {
            "listen_addresses": "'127.0.0.1'",
            "port": str(port),
            "unix_socket_directories": f"'{self.sockets.resolve()}'",
            "max_connections": "100",
            "shared_buffers": "'256MB'",
            # Loaded once by the postmaster, not by each new connection's first
            # score: ~2-4 MiB less per backend (docs/performance.md, P6).
            "shared_preload_libraries": f"'{PRELOAD_LIBRARIES}'",
        }

    @property
    def _auto_conf(self) -> Path:
        return self.data / "postgresql.auto.conf"

    def _conf_text(self, port: int) -> str:
        """postgresql.auto.conf with pgscore's settings, keeping any other
        line (what ALTER SYSTEM wrote)."""
        conf = self._auto_conf
        settings = self._settings(port)
        kept = [line for line in (conf.read_text().splitlines() if conf.exists() else [])
                if line.split("=", 1)[0].strip() not in settings and line != CONF_MARK]
        return "\n".join([*kept, CONF_MARK, *(f"{key} = {value}" for key, value in settings.items())]) + "\n"

    def _settings_changed(self, port: int) -> bool:
        conf = self._auto_conf
        return not conf.exists() or conf.read_text() != self._conf_text(port)

    def _write_conf(self, port: int) -> None:
        conf = self._auto_conf
        conf.write_text(self._conf_text(port))
        self._own(conf)

    def _create_database(self) -> None:
        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE}"')

    # -- running PostgreSQL's programs, as the postgres OS user when we are root

    def _bindir(self) -> Path:
        override = os.environ.get("PGSCORE_PG_BINDIR")
        candidates = [Path(override)] if override else sorted(
            Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
            reverse=True)
        for bindir in candidates:
            if (bindir / "pg_ctl").exists():
                return bindir
        found = shutil.which("pg_ctl")
        if found:
            return Path(found).parent
        raise LocalDatabaseError(
            "no PostgreSQL server binaries found: run `apt-get install postgresql-15 postgresql-plpython3-15` "
            "(or `make setup`), or set PGSCORE_PG_BINDIR"
        )

    def program(self, name: str) -> str:
        """The path of PostgreSQL's program ``name`` (pg_ctl, pgbench, ...): in PGSCORE_PG_BINDIR, else the newest installed."""
        return str(self._bindir() / name)

    def _run(self, command: list[str], check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
        if os.geteuid() == 0:
            command = ["runuser", "-u", SUPERUSER, "--", "env", *_env_args(env), *command]
            env = None
        result = subprocess.run(command, capture_output=True, text=True, env=env, cwd="/")
        if check and result.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise LocalDatabaseError(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}{log}")
        return result

    def _own(self, path: Path) -> None:
        if os.geteuid() == 0:
            user = pwd.getpwnam(SUPERUSER)
            os.chown(path, user.pw_uid, user.pw_gid)


def _env_args(env: dict | None) -> list[str]:
    if env is None:
        return []
    keep = ("PYTHONPATH", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "LANG", "LC_ALL",
            "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
    return [f"{key}={env[key]}" for key in keep if key in env]


def running_servers() -> list[tuple[Path, int | None]]:
    """(folder, port) of every pgscore local server running on this machine:
    a postmaster whose data folder lies in a folder with pgscore's state file."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        if not args or not args[0].endswith(b"/postgres") or b"-D" not in args[:-1]:
            continue
        data = Path(os.fsdecode(args[args.index(b"-D") + 1]))
        folder = data.parent
        if data.name != "data" or not (folder / "state.json").exists():
            continue
        try:
            port = json.loads((folder / "state.json").read_text()).get("port")
        except (OSError, ValueError):
            port = None
        found.append((folder.resolve(), port))
    return sorted(set(found), key=lambda entry: str(entry[0]))


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        found = _bind(port)
        if found:
            return found
    raise LocalDatabaseError("no free TCP port on 127.0.0.1")


def _port_free(port: int) -> bool:
    return _bind(port) is not None


def _bind(port: int) -> int | None:
    """The port a socket could bind on 127.0.0.1 (0: any), as PostgreSQL
    binds (SO_REUSEADDR: connections closing on it do not count); None if taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return None
        return sock.getsockname()[1]


def local_database(directory: str | os.PathLike | None = None) -> LocalDatabase:
    return LocalDatabase((Path(directory) if directory else DEFAULT_DIR).resolve())
