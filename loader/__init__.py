"""pgscore: score customers with scikit-learn models inside PostgreSQL.

The Python API behind the ``pgscore`` command (:mod:`pgscore.api`)::

    import pgscore
    pgscore.migrate(dsn)
    pgscore.attach(dsn, "churn_risk", '"CRM"."Subscribers"', "SubscriberID",
                   events=[("support.tickets", "SubscriberID", "TicketCount")])
    result = pgscore.push_model(dsn, "model.joblib", name="churn_risk", activate=True)
    pgscore.list_models(dsn)
    pgscore.rollback(dsn, "churn_risk")

Every error pgscore raises on purpose is a ``pgscore.PgscoreError``
(:mod:`pgscore.errors`).
"""

from .api import (PushResult, activate, approve, attach, detach, export_sql, list_approvals, list_models, list_scorers,
                  migrate, push_model, rescore, revoke, rollback, runtime_info, score)
from .errors import MigrationError, ModelNotFound, PgscoreError, PushError, SchemaMissing, ScorerNotFound

__all__ = ["MigrationError", "ModelNotFound", "PgscoreError", "PushError", "PushResult", "SchemaMissing",
           "ScorerNotFound", "activate", "approve", "attach", "detach", "export_sql", "list_approvals", "list_models",
           "list_scorers", "migrate", "push_model", "rescore", "revoke", "rollback", "runtime_info", "score"]
