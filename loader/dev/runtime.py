"""The pinned ML runtime: its versions, and installing it for the server's Python.

``runtime-requirements.txt`` (in the pgscore package) is the single list of
versions. The loader's virtualenv installs it through pyproject; the
server's embedded Python (plpython3u, e.g. Debian's python3.11) gets the same
list in a folder of its own that the postmaster's ``PYTHONPATH`` names.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path

from ..errors import RuntimeInstallError


def requirements_text() -> str:
    return resources.files("pgscore").joinpath("runtime-requirements.txt").read_text(encoding="utf-8")


def pinned() -> dict[str, str]:
    """Distribution name -> pinned version, from runtime-requirements.txt."""
    pins = {}
    for line in requirements_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    return pins


def server_python_version(plpython_library: Path) -> str:
    """'3.11' for a plpython3.so linked against libpython3.11."""
    try:
        linked = subprocess.run(["ldd", str(plpython_library)], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        linked = ""
    found = re.search(r"libpython(\d+\.\d+)", linked)
    if found:
        return found.group(1)
    return "3.11"  # Debian bookworm's, the supported server platform


def install(target_root: Path, python_version: str) -> Path:
    """Installs the pinned runtime for ``python_version`` under ``target_root``.

    The folder is named by a hash of the pins and the Python version, so a
    change of pins installs a new folder and an existing one is reused.
    Returns the folder; raises RuntimeInstallError when pip fails.
    """
    text = requirements_text()
    key = hashlib.sha256(f"{python_version}\n{text}".encode()).hexdigest()[:12]
    target = target_root / f"py{python_version}-{key}"
    if (target / ".complete").exists():
        return target
    target_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=target_root))
    requirements = staging / "requirements.txt"
    requirements.write_text(text)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--target", str(staging / "lib"),
               "-r", str(requirements)]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python_version != here:
        # Wheels for the server's CPython, not the one running pip.
        command += ["--only-binary=:all:", "--python-version", python_version,
                    "--platform", f"manylinux_2_28_{platform.machine()}"]
    print(f"pgscore: installing the server's Python runtime into {target} (once) ...", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeInstallError(f"pip could not install the server runtime:\n{result.stderr.strip()}")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging / "lib", target)
    shutil.rmtree(staging, ignore_errors=True)
    (target / ".complete").write_text(text)
    for path in [target, *target.rglob("*")]:
        # The postgres OS user must read what root installed.
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target
