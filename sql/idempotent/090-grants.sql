-- Least privilege for the three group roles (docs/contract.md, "Roles").
-- Functions are executable by PUBLIC by default: take that back first.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA scoring FROM PUBLIC;
REVOKE ALL ON ALL PROCEDURES IN SCHEMA scoring FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA scoring FROM PUBLIC;

-- scoring_app: insert complaints, read profiles. The trigger does the rest as owner.
GRANT SELECT ON public.customer_profiles TO scoring_app;
GRANT SELECT, INSERT ON public.complaints TO scoring_app;

-- scoring_analyst: score, read profiles and model metadata, never the blob.
GRANT USAGE ON SCHEMA scoring TO scoring_analyst;
GRANT SELECT ON public.customer_profiles TO scoring_analyst;
GRANT SELECT (model_id, name, version, format, sha256, feature_names, runtime, scoring_path, path_note,
              metrics, note, created_at, created_by) ON scoring.models TO scoring_analyst;
GRANT SELECT ON scoring.deployments, scoring.active_models, scoring.errors TO scoring_analyst;
GRANT EXECUTE ON FUNCTION scoring.score(bigint), scoring.score(text, jsonb),
                          scoring.score_many(bigint[], text), scoring.runtime_info(),
                          scoring.warmup(text) TO scoring_analyst;

-- scoring_loader: push models, activate, roll back, rescore.
GRANT USAGE ON SCHEMA scoring TO scoring_loader;
GRANT SELECT, INSERT ON scoring.models TO scoring_loader;
-- push records the sql path after checking the server's SQL against the model.
GRANT UPDATE (scoring_path, path_note) ON scoring.models TO scoring_loader;
GRANT SELECT, INSERT ON scoring.deployments TO scoring_loader;
GRANT SELECT ON scoring.active_models, scoring.errors TO scoring_loader;
GRANT SELECT ON public.customer_profiles TO scoring_loader;
GRANT UPDATE (churn_score, churn_model_id, churn_scored_at) ON public.customer_profiles TO scoring_loader;
GRANT EXECUTE ON FUNCTION scoring.activate(text, integer), scoring.rollback(text),
                          scoring.set_scoring_path(text, integer, text),
                          scoring.score(bigint), scoring.score(text, jsonb),
                          scoring.score_many(bigint[], text), scoring.score_with_model(bigint, bigint[]),
                          scoring.runtime_info(), scoring.warmup(text),
                          scoring.sql_expression(bigint), scoring._require_loadable(bigint, text),
                          scoring._float8_from_bits(bigint) TO scoring_loader;  -- rescore writes scores with it
GRANT EXECUTE ON PROCEDURE scoring.rescore(text, integer) TO scoring_loader;
-- rescore runs as its caller and calls its Python; activate and rollback
-- (as their caller too) name the closest model when a name is unknown.
GRANT EXECUTE ON PROCEDURE scoring._rescore_plpython(text, integer, text[]) TO scoring_loader;
GRANT EXECUTE ON FUNCTION scoring._unknown_model_hint(text) TO scoring_loader;

-- rescore's UPDATE on the sql path raises through it for a profile the model
-- rejects; it runs with the caller's rights, so the loader still cannot write scoring.errors.
GRANT EXECUTE ON FUNCTION scoring._score_rejected(bigint, bigint, text, text) TO scoring_loader;

-- Scorers (060-scorers.sql). The registry is readable by all and written
-- only by the owners of the tables in it (row-level security, 0011);
-- attach, attach_events and detach run as their caller and check that too.
GRANT USAGE ON SCHEMA scoring TO PUBLIC;
GRANT SELECT ON scoring.scorers TO PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON scoring.scorer_entities, scoring.scorer_events TO PUBLIC;
GRANT EXECUTE ON FUNCTION scoring.attach(text, regclass, text, text, text, text, text, text[], boolean),
                          scoring.attach_events(text, regclass, text, text), scoring.detach(text),
                          scoring._require_owner(regclass, text), scoring._grant_schema_usage(regclass), scoring._column_type(regclass, text, text),
                          scoring._create_scorer_triggers(text), scoring._score_table(text),
                          scoring._recount(text, oid), scoring._scorer_trigger() TO PUBLIC;
-- Reading a scorer's scores, as analysts read the reference profiles' and rescoring, as the loader does.
GRANT USAGE ON SCHEMA scoring_scores TO scoring_analyst, scoring_loader, PUBLIC;
GRANT EXECUTE ON FUNCTION scoring.score_key(text, text), scoring.score_keys(text, text[])
    TO scoring_analyst, scoring_loader;
GRANT EXECUTE ON FUNCTION scoring._rescore_batch(text, text, integer), scoring._scorer_rows(text),
                          scoring.score_keys_with_model(bigint, text, text[]) TO scoring_loader;
