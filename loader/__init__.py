"""pgscore: score customers with scikit-learn models inside PostgreSQL.

The Python API behind the ``pgscore`` command::

    import pgscore
    pgscore.migrate(dsn)
    result = pgscore.push_model(dsn, "model.joblib", name="churn", activate=True)
    pgscore.list_models(dsn)
    pgscore.rollback(dsn, "churn")
"""

from .models import PushError, PushResult, activate, list_models, push_model, rollback
from .migrate import migrate

__all__ = ["PushError", "PushResult", "activate", "list_models", "migrate", "push_model", "rollback"]
