"""pgscore: score customers with scikit-learn models inside PostgreSQL.

The Python API behind the ``pgscore`` command (:mod:`pgscore.api`)::

    import pgscore
    pgscore.migrate(dsn)
    result = pgscore.push_model(dsn, "model.joblib", name="churn", activate=True)
    pgscore.list_models(dsn)
    pgscore.rollback(dsn, "churn")

Every error pgscore raises on purpose is a ``pgscore.PgscoreError``
(:mod:`pgscore.errors`).
"""

from .api import (PushResult, activate, approve, export_sql, list_approvals, list_models, migrate, push_model,
                  rescore, revoke, rollback, runtime_info, score)
from .errors import MigrationError, ModelNotFound, PgscoreError, PushError, SchemaMissing

__all__ = ["MigrationError", "ModelNotFound", "PgscoreError", "PushError", "PushResult", "SchemaMissing",
           "activate", "approve", "export_sql", "list_approvals", "list_models", "migrate", "push_model",
           "rescore", "revoke", "rollback", "runtime_info", "score"]
