"""Model blob formats, and what may be loaded from them.

- 'skops' (the default of ``pgscore push``): skops.io's format, which
  rebuilds only the types it is told to trust; anything else is refused
  with the list of offending types, nothing executed.
- 'joblib': a pickle. Loading it runs whatever code it names, so it is
  pushed only on explicit request (``pgscore push --format joblib``), and
  :func:`loads` unpickles it only when handed the sha256 a superuser
  approved (``pgscore approve``; the server's one gate is
  :func:`pgscore_server.approvals.require`), checked against the blob itself.

The loader and the server share this module, so both trust the same list.
"""

from __future__ import annotations

import io

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (package docstring)
if TYPE_CHECKING:
    from typing import Any

FORMATS = ("skops", "joblib")
# Formats whose loading runs no code from the blob. Every other format, known
# or not, is treated as a pickle: it needs a superuser's approval.
SAFE_FORMATS = ("skops",)

# Types skops does not trust by default that scikit-learn's own estimators
# need (tree structures, dtypes). Nothing here can run code when rebuilt.
SKOPS_TRUSTED_TYPES = (
    "numpy.dtype",
    "sklearn.tree._tree.Tree",
    "sklearn._loss.link.Interval",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
)


class UntrustedTypes(Exception):
    """A skops blob needs types outside SKOPS_TRUSTED_TYPES."""

    def __init__(self, types: list[str]) -> None:
        super().__init__(", ".join(types))
        self.types = types


class PickleNotApproved(Exception):
    """A pickle was about to be loaded without the approved sha256 of exactly its bytes."""


def unpickles(fmt: str) -> bool:
    """Whether loading a blob of format ``fmt`` unpickles it (runs code it names)."""
    return fmt not in SAFE_FORMATS


def dumps(estimator: Any, fmt: str) -> bytes:
    """``estimator`` serialised in ``fmt`` ('skops' or 'joblib')."""
    if fmt == "skops":
        import skops.io

        return skops.io.dumps(estimator)
    if fmt == "joblib":
        import joblib

        buffer = io.BytesIO()
        joblib.dump(estimator, buffer)
        return buffer.getvalue()
    raise ValueError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")


def untrusted_types(blob: bytes) -> list[str]:
    """The types a skops blob needs that are not trusted here (empty: loadable)."""
    import skops.io

    return sorted(set(skops.io.get_untrusted_types(data=blob)) - set(SKOPS_TRUSTED_TYPES))


def loads(blob: bytes, fmt: str, approved_sha256: str | None = None) -> Any:
    """The estimator in ``blob``. Raises UntrustedTypes for a skops blob that
    needs untrusted types, PickleNotApproved for a pickle unless
    ``approved_sha256`` (what a superuser approved) is the sha256 of ``blob``,
    ValueError for an unknown format, and whatever the format's loader
    raises for a damaged blob."""
    if fmt == "skops":
        refused = untrusted_types(blob)
        if refused:
            raise UntrustedTypes(refused)
        import skops.io

        return skops.io.loads(blob, trusted=list(SKOPS_TRUSTED_TYPES))
    if fmt == "joblib":
        import hashlib

        if approved_sha256 is None or hashlib.sha256(blob).hexdigest() != approved_sha256:
            raise PickleNotApproved(f"no approval for this blob (approved: {approved_sha256})")
        import joblib

        return joblib.load(io.BytesIO(blob))
    raise ValueError(f"unknown model format {fmt!r}; use one of {', '.join(FORMATS)}")
