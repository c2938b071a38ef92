"""The server's ML runtime: which versions it has, and whether a model fits it.

Versions are read from package metadata, without importing scikit-learn,
so asking costs nothing on a cold backend.
"""

from __future__ import annotations

from .errors import MODEL_LOAD_FAILED, ScoringError, describe

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any, Mapping

# Distributions whose versions decide whether a pickled model loads.
PACKAGES = ("scikit-learn", "numpy", "scipy", "joblib", "pandas", "threadpoolctl", "skops")


def versions() -> dict[str, str | None]:
    """Python and library versions of this interpreter; None for a missing library."""
    # Imported here: importlib.metadata costs a new backend tens of
    # milliseconds, and only the scikit-learn path and runtime_info need it.
    import platform
    from importlib import metadata

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def parse_recorded(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        import json  # here: only the scikit-learn path reads the recorded runtime

        return json.loads(value)
    return dict(value)


def incompatibilities(recorded: Mapping[str, Any], available: Mapping[str, Any]) -> list[str]:
    """Why a model saved under ``recorded`` versions won't load under ``available`` ones.

    scikit-learn must match exactly (its pickles change between releases);
    numpy must match in its major version (1.x and 2.x pickles differ).
    """
    problems = []
    saved_sklearn = recorded.get("scikit-learn")
    have_sklearn = available.get("scikit-learn")
    if saved_sklearn and saved_sklearn != have_sklearn:
        problems.append(f"scikit-learn {saved_sklearn} (here: {have_sklearn or 'not installed'})")
    saved_numpy = recorded.get("numpy")
    have_numpy = available.get("numpy")
    if saved_numpy and (not have_numpy or saved_numpy.split(".")[0] != have_numpy.split(".")[0]):
        problems.append(f"numpy {saved_numpy} (here: {have_numpy or 'not installed'})")
    return problems


def check_compatible(recorded: Mapping[str, Any], label: str) -> None:
    """Raises ScoringError when the model was saved with a runtime this server lacks."""
    problems = incompatibilities(recorded, versions())
    if problems:
        raise ScoringError(
            f"{label} was saved with " + " and ".join(problems) + "; the server cannot load it",
            sqlstate=MODEL_LOAD_FAILED,
            hint="re-save the model with the server's versions (SELECT scoring.runtime_info()) and push it again",
        )


def describe_load_error(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError):
        return f"it needs the Python module {exc.name!r}, which the server's runtime does not have"
    return describe(exc)
