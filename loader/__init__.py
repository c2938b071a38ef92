"""pgscore: score customers with scikit-learn models inside PostgreSQL.

The Python API behind the ``pgscore`` command::

    import pgscore
    pgscore.migrate(dsn)
    result = pgscore.push_model(dsn, "model.joblib", name="churn", activate=True)
    pgscore.list_models(dsn)
    pgscore.rollback(dsn, "churn")
"""

from .connection import SchemaMissing
from .errors import PgscoreError
from .migrate import MigrationError, migrate
from .models import ModelNotFound, PushError, PushResult, activate, list_models, push_model, rollback

__all__ = ["MigrationError", "ModelNotFound", "PgscoreError", "PushError", "PushResult", "SchemaMissing",
           "activate", "list_models", "migrate", "push_model", "rollback"]
