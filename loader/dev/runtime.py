"""The pinned ML runtime: its versions, and installing it for the server's Python.

``runtime-requirements.txt`` (in the pgscore package) is the single list of
versions. The loader's virtualenv installs it through pyproject; the
server's embedded Python (plpython3u, e.g. Debian's python3.11) gets the same
list in a folder of its own that the postmaster's ``PYTHONPATH`` names.

Server extras: a server's runtime is that list plus the pins of its extras
file (``runtime-extras.txt`` in the local server's folder, or
``docker/runtime-extras.txt`` for the image), which only ``pgscore runtime
add`` writes (:func:`add`): a named extra (NAMED_EXTRAS: ``onnx``, the pins of
``runtime-onnx-requirements.txt``) or any ``NAME==VERSION`` a DBA chooses.
The extras go into a second folder (:func:`install_extras`), named by a hash
of the Python version, the base list and the extras, after the base folder on
``PYTHONPATH``: the base runtime is installed once and shared, and a change
of extras restarts the local server on a new folder. Every package there
runs as the server's OS account in every backend that imports it.
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
from typing import Any

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
    return _pip_install(target_root / f"py{python_version}-{key}", python_version, "the server's Python runtime",
                        {"requirements.txt": text}, ["-r", "requirements.txt"], record=text)


# A local server's extras file, in its folder (``pgscore runtime add --dir``).
EXTRAS_FILE = "runtime-extras.txt"
# Named server extras: name -> the pinned requirements file in the pgscore package.
NAMED_EXTRAS = {"onnx": "runtime-onnx-requirements.txt"}
_PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)")


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(text: str) -> dict[str, tuple[str, str]]:
    """normalised name -> (name, version) of each NAME==VERSION line of ``text``."""
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        match = _PIN.fullmatch(line)
        if match:
            found[_normal(match.group(1))] = (match.group(1), match.group(2))
    return found


def extras_text(extras_file: Path) -> str:
    """The pins of an extras file ('' when it does not exist)."""
    return extras_file.read_text(encoding="utf-8") if extras_file.exists() else ""


def add(extras_file: Path, specs: list[str]) -> list[str]:
    """Adds ``specs`` (a named extra of NAMED_EXTRAS, or NAME==VERSION) to the
    extras file; returns the pins it added (none for pins already there).

    Raises RuntimeInstallError for a spec that is neither, a package the base
    runtime or the file already pins to another version, or a named extra's
    pin that conflicts so."""
    base = {name: version for name, (_, version) in _pins(requirements_text()).items()}
    present = _pins(extras_text(extras_file))
    wanted: list[tuple[str, str]] = []
    for spec in specs:
        spec = spec.strip()
        if spec in NAMED_EXTRAS:
            text = resources.files("pgscore").joinpath(NAMED_EXTRAS[spec]).read_text(encoding="utf-8")
            wanted += list(_pins(text).values())
            continue
        match = _PIN.fullmatch(spec)
        if not match:
            raise RuntimeInstallError(
                f"{spec!r} is neither a server extra ({', '.join(NAMED_EXTRAS)}) nor a pinned package NAME==VERSION: "
                "the server's runtime holds exact versions only")
        wanted.append((match.group(1), match.group(2)))
    added = []
    for name, version in wanted:
        key = _normal(name)
        if key in base:
            if base[key] != version:
                raise RuntimeInstallError(f"{name} is pinned to {base[key]} by the base runtime "
                                          "(runtime-requirements.txt); pgscore's server runs that version only")
            continue
        if key in present:
            if present[key][1] != version:
                raise RuntimeInstallError(f"{extras_file} already pins {present[key][0]}=={present[key][1]}; "
                                          "edit the file to change it deliberately")
            continue
        present[key] = (name, version)
        added.append(f"{name}=={version}")
    if added:
        extras_file.parent.mkdir(parents=True, exist_ok=True)
        head = "" if extras_file.exists() else (
            "# Server extras (pgscore runtime add): packages beyond runtime-requirements.txt that this server's\n"
            "# Python runtime holds. Each runs as the server's OS account in every session that imports it.\n")
        with extras_file.open("a", encoding="utf-8") as out:
            out.write(head + "".join(f"{pin}\n" for pin in added))
    return added


def install_extras(target_root: Path, python_version: str, text: str) -> Path | None:
    """Installs the extras pinned in ``text`` for ``python_version`` into a
    folder of their own under ``target_root`` (None when ``text`` pins
    nothing). Their dependencies are resolved against the base runtime's
    pins (a constraints file) and those the base folder already has are
    removed, so the folder holds only what the extras add. Raises
    RuntimeInstallError when pip fails."""
    if not _pins(text):
        return None
    base = requirements_text()
    key = hashlib.sha256(f"{python_version}\n{base}\n{text}".encode()).hexdigest()[:12]
    return _pip_install(target_root / f"py{python_version}-extras-{key}", python_version,
                        "the server's runtime extras", {"extras.txt": text, "base.txt": base},
                        ["-r", "extras.txt", "-c", "base.txt"], record=text,
                        prune=lambda lib: _remove_base_packages(lib, set(_pins(base))))


def _pip_install(target: Path, python_version: str, what: str, files: dict[str, str], requirements: list[str],
                 record: str, prune: Any = None) -> Path:
    """pip-installs ``requirements`` (arguments naming ``files``, written
    beside them) into ``target`` for the server's ``python_version``, once:
    staged in a folder of its own and moved into place when complete, so an
    interrupted install is never used. ``prune(lib)`` may remove what the
    folder need not hold. Raises RuntimeInstallError when pip fails."""
    if (target / ".complete").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=target.parent))
    for name, text in files.items():
        (staging / name).write_text(text)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--target", str(staging / "lib"),
               *[str(staging / arg) if arg in files else arg for arg in requirements]]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python_version != here:
        # Wheels for the server's CPython, not the one running pip.
        command += ["--only-binary=:all:", "--python-version", python_version,
                    "--platform", f"manylinux_2_28_{platform.machine()}"]
    print(f"pgscore: installing {what} into {target} (once) ...", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeInstallError(f"pip could not install {what}:\n{result.stderr.strip()}")
    if prune is not None:
        prune(staging / "lib")
    shutil.rmtree(staging / "lib" / "bin", ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging / "lib", target)
    shutil.rmtree(staging, ignore_errors=True)
    (target / ".complete").write_text(record)
    for path in [target, *target.rglob("*")]:
        # The postgres OS user must read what root installed.
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target
    target_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=target_root))
    (staging / "extras.txt").write_text(text)
    (staging / "base.txt").write_text(base)
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-input", "--target", str(staging / "lib"),
               "-r", str(staging / "extras.txt"), "-c", str(staging / "base.txt")]
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if python_version != here:
        command += ["--only-binary=:all:", "--python-version", python_version,
                    "--platform", f"manylinux_2_28_{platform.machine()}"]
    print(f"pgscore: installing the server's runtime extras into {target} (once) ...", file=sys.stderr)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise RuntimeInstallError(f"pip could not install the server's runtime extras:\n{result.stderr.strip()}")
    _remove_base_packages(staging / "lib", set(_pins(base)))
    shutil.rmtree(staging / "lib" / "bin", ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging / "lib", target)
    shutil.rmtree(staging, ignore_errors=True)
    (target / ".complete").write_text(text)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def _remove_base_packages(folder: Path, base: set[str]) -> None:
    """Deletes from ``folder`` the distributions the base runtime pins (the
    same versions, through the constraints): the base folder comes first
    on PYTHONPATH and serves them."""
    for info in folder.glob("*.dist-info"):
        name = info.name[: -len(".dist-info")].rsplit("-", 1)[0]
        if _normal(name) not in base:
            continue
        record = info / "RECORD"
        for line in record.read_text().splitlines() if record.exists() else []:
            path = (folder / line.split(",", 1)[0]).resolve()
            if path.is_relative_to(folder.resolve()) and path.is_file():
                path.unlink()
        shutil.rmtree(info, ignore_errors=True)
    for directory in sorted((d for d in folder.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
