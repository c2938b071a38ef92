"""The child process in which ``pgscore push`` unpickles a joblib file.

Run by :func:`pgscore.models.load_model_file` as ``python -P -m
pgscore.unpickle``, with the file's bytes on stdin, in an environment
without the database's credentials (no ``DATABASE_URL`` or ``PG*``
variables, ``PGPASSFILE=/dev/null``) and without the parent's open files.
It unpickles the file, converts the object to skops and writes one answer
to its stdout: an 8-byte length, a JSON report, then the skops bytes. The
parent rebuilds the estimator from those bytes with skops' trusted-types
check, so nothing the pickle did in here reaches the parent's objects.

This is not a sandbox: the pickle's code runs here as the user who runs
pgscore, with that user's files and network (docs/security.md).
"""

from __future__ import annotations

import io
import json
import os
import sys
import warnings


def convert(data: bytes) -> tuple[dict, bytes]:
    """(report, skops bytes) of a joblib file's bytes. The report has
    'error' when the file does not unpickle, else 'saved' (library versions
    it was saved with), 'type', and 'skops_error' or 'untrusted'."""
    report: dict = {}
    try:
        import joblib
        from sklearn.exceptions import InconsistentVersionWarning

        from pgscore_server import formats
        from pgscore_server import runtime as server_runtime

        saved = dict(server_runtime.versions())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", InconsistentVersionWarning)
            estimator = joblib.load(io.BytesIO(data))
        for warning in caught:
            if isinstance(warning.message, InconsistentVersionWarning):
                saved["scikit-learn"] = warning.message.original_sklearn_version
    except Exception as exc:  # noqa: BLE001 - whatever unpickling raised is the answer
        report["error"] = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, ModuleNotFoundError) and exc.name:
            report["missing_module"] = exc.name  # a third-party pipeline step: push says what to do
        return report, b""
    report["saved"] = saved
    report["type"] = f"{type(estimator).__module__}.{type(estimator).__qualname__}"
    try:
        blob = formats.dumps(estimator, "skops")
        report["untrusted"] = formats.untrusted_types(blob)
    except Exception as exc:  # noqa: BLE001
        report["skops_error"] = f"{type(exc).__name__}: {exc}"
        return report, b""
    return report, blob


def main() -> int:
    data = sys.stdin.buffer.read()
    # The answer goes to a private copy of stdout; whatever the pickle
    # prints (print, or file descriptor 1) ends on stderr instead.
    answer = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    report, blob = convert(data)
    header = json.dumps(report).encode()
    answer.write(len(header).to_bytes(8, "big") + header + blob)
    answer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
