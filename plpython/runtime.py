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
# Server extras whose presence runtime_info reports (None: not installed):
# onnxruntime scores the 'onnx' path (pgscore_server.onnxpath).
EXTRAS = ("onnxruntime",)


def versions() -> dict[str, str | None]:
    """Python and library versions of this interpreter; None for a missing library."""
    # Imported here: importlib.metadata costs a new backend tens of
    # milliseconds, and only the scikit-learn path and runtime_info need it.
    import platform
    from importlib import metadata

    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES + EXTRAS:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def top_level_modules() -> list[str]:
    """The top-level modules this interpreter's installed distributions
    provide (the pinned runtime, its extras and whatever a DBA added with
    ``pgscore runtime add``): what push asks before it stores a model built
    with a library other than scikit-learn as a blob the server rebuilds."""
    from importlib import metadata

    return sorted(metadata.packages_distributions())


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
        return (f"it needs the Python module {exc.name!r}, which the server's runtime does not have; "
                + missing_module_guidance(exc.name))
    return describe(exc)


def missing_module_guidance(module: str | None) -> str:
    """What to do with a model that needs a package the server's runtime lacks
    (a third-party pipeline step: feature_engine, imbalanced-learn, ...); one
    wording for the server's refusal and ``pgscore push``'s
    (docs/models-from-other-tools.md, "Third-party pipelines")."""
    package = (module or "PACKAGE").split(".")[0]
    return (f"pgscore scores such a pipeline once its {package} steps are rewritten with scikit-learn's own "
            "transformers (it then compiles, or loads on the sklearn path), or once it is exported to ONNX "
            "(pgscore push model.onnx); or a DBA adds the package to the server's runtime deliberately: "
            "pgscore runtime add PACKAGE==VERSION, then restart the server. Every package in the server's "
            "runtime runs as the server's OS account in every session")
