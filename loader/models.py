"""The names ``pgscore.models`` always had, from where they live now:
pushing (pgscore.push), parity checks and export (pgscore.verify),
activating, rolling back and listing (pgscore.activation)."""

from __future__ import annotations

from .activation import ModelNotFound, activate, list_models, rollback
from .push import (
    EXPECTED_FILE,
    SAMPLE_SIZE,
    SCORING_PATHS,
    UNPICKLE_TIMEOUT,
    PushError,
    PushResult,
    check_estimator,
    check_model_name,
    child_environment,
    file_format,
    load_model_file,
    push_model,
)
from .verify import (
    COMPILE_CHECK_SIZE,
    PARITY_TOLERANCE,
    ROW_BY_ROW_MAX,
    check_rows_for,
    export_sql,
    fetch_feature_rows,
    profile_columns,
)
from .verify import batch_parity as _batch_parity
from .verify import scores_one_by_one as _scores_one_by_one

__all__ = ["COMPILE_CHECK_SIZE", "EXPECTED_FILE", "PARITY_TOLERANCE", "ROW_BY_ROW_MAX", "SAMPLE_SIZE", "SCORING_PATHS",
           "UNPICKLE_TIMEOUT", "ModelNotFound", "PushError", "PushResult", "_batch_parity", "_scores_one_by_one",
           "activate", "check_estimator", "check_model_name", "check_rows_for", "child_environment", "export_sql",
           "fetch_feature_rows", "file_format", "list_models", "load_model_file", "profile_columns", "push_model",
           "rollback"]
