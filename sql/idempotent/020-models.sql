-- Model versions, deployments and the active model of each name.

CREATE OR REPLACE FUNCTION scoring._assign_model_version()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- Serialise pushes of one name so that versions are 1, 2, 3... without gaps or races.
    PERFORM pg_advisory_xact_lock(hashtext('scoring.models'), hashtext(NEW.name));
    SELECT coalesce(max(m.version), 0) + 1 INTO NEW.version
      FROM scoring.models m WHERE m.name = NEW.name;
    NEW.created_at := now();
    -- The login that pushed: pgscore runs a superuser's commands as scoring_loader (SET ROLE).
    NEW.created_by := session_user;
    RETURN NEW;
END
$$;

CREATE OR REPLACE TRIGGER assign_version
    BEFORE INSERT ON scoring.models
    FOR EACH ROW EXECUTE FUNCTION scoring._assign_model_version();

CREATE OR REPLACE VIEW scoring.active_models AS
SELECT DISTINCT ON (d.name)
       d.name, d.model_id, m.version, d.activated_at
  FROM scoring.deployments d
  JOIN scoring.models m USING (model_id)
 ORDER BY d.name, d.deployment_id DESC;
COMMENT ON VIEW scoring.active_models IS 'the active version of each model name: its latest deployment';

-- scoring._require_loadable: raises (SQLSTATE 42501, with the command to run
-- in the HINT) when the server would have to unpickle MODEL_ID's blob on
-- PATH (NULL: its recorded path) and no superuser approved its sha256.
-- activate, rollback and set_scoring_path call it before they change
-- anything; loading a model checks the same again (pgscore_server.approvals).
CREATE OR REPLACE FUNCTION scoring._require_loadable(model_id bigint, path text)
RETURNS void
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
api.require_loadable(plpy, GD, model_id, path)
$python$;
COMMENT ON FUNCTION scoring._require_loadable(bigint, text) IS 'internal: refuses a pickle no superuser approved (pgscore approve)';

-- The HINT for a model name never pushed: the closest pushed name and the
-- names pushed (pgscore_server.registry.unknown_model_hint, the one
-- wording, which the Python scoring functions use too).
CREATE OR REPLACE FUNCTION scoring._unknown_model_hint(model_name text)
RETURNS text
LANGUAGE plpython3u
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $python$
#pgscore:runtime
return api.unknown_model_hint(plpy, GD, model_name)
$python$;
COMMENT ON FUNCTION scoring._unknown_model_hint(text) IS 'internal: the hint for a model name never pushed (did you mean ...?)';

-- scoring.activate: make NAME's VERSION the active model; returns its model_id.
CREATE OR REPLACE FUNCTION scoring.activate(model_name text, version integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_id bigint;
BEGIN
    -- The same lock as rollback(), which replays this name's history.
    PERFORM pg_advisory_xact_lock(hashtext('scoring.deployments'), hashtext(model_name));
    SELECT m.model_id INTO found_id
      FROM scoring.models m WHERE m.name = model_name AND m.version = activate.version;
    IF found_id IS NULL THEN
        IF NOT EXISTS (SELECT FROM scoring.models m WHERE m.name = model_name) THEN
            RAISE EXCEPTION 'no model named % has been pushed', quote_literal(model_name)
                USING ERRCODE = 'undefined_object', HINT = scoring._unknown_model_hint(model_name);
        END IF;
        RAISE EXCEPTION 'model % has no version %', quote_literal(model_name), version
            USING ERRCODE = 'undefined_object',
                  HINT = format('list the versions with: pgscore models --name %s', model_name);
    END IF;
    PERFORM scoring._require_loadable(found_id, NULL);
    INSERT INTO scoring.deployments (name, model_id, action) VALUES (model_name, found_id, 'activate');
    RETURN found_id;
END
$$;
COMMENT ON FUNCTION scoring.activate(text, integer) IS 'activates a pushed model version; takes effect on the next scoring call in every backend';

-- scoring.rollback: undo the latest activation of NAME. Deployments are
-- replayed as a stack (activate pushes, rollback pops), so repeated
-- rollbacks walk back through history instead of flipping between two versions.
CREATE OR REPLACE FUNCTION scoring.rollback(model_name text)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stack bigint[] := '{}';
    d record;
    target bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('scoring.deployments'), hashtext(model_name));
    FOR d IN SELECT action, model_id FROM scoring.deployments
              WHERE name = model_name ORDER BY deployment_id LOOP
        IF d.action = 'activate' THEN
            stack := stack || d.model_id;
        ELSE
            stack := stack[1:cardinality(stack) - 1];
        END IF;
    END LOOP;
    IF cardinality(stack) = 0 AND NOT EXISTS (SELECT FROM scoring.models m WHERE m.name = model_name) THEN
        RAISE EXCEPTION 'no model named % has been pushed', quote_literal(model_name)
            USING ERRCODE = 'undefined_object', HINT = scoring._unknown_model_hint(model_name);
    END IF;
    IF cardinality(stack) < 2 THEN
        RAISE EXCEPTION 'model % has no earlier deployment to roll back to', quote_literal(model_name)
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = format('see the history with: pgscore models --name %s; activate a version with: pgscore activate %s VERSION',
                                model_name, model_name);
    END IF;
    target := stack[cardinality(stack) - 1];
    PERFORM scoring._require_loadable(target, NULL);
    INSERT INTO scoring.deployments (name, model_id, action) VALUES (model_name, target, 'rollback');
    RETURN target;
END
$$;
COMMENT ON FUNCTION scoring.rollback(text) IS 're-activates the deployment before the latest one of a model name';

-- scoring.set_scoring_path: force how a model version is evaluated in the
-- database: 'sql' (generated SQL in the complaint trigger and score(bigint),
-- the compiled arrays elsewhere), 'compiled' (numpy on the data-only arrays)
-- or 'sklearn' (scikit-learn on the blob: a skops blob, or a pickle whose
-- sha256 a superuser approved). Takes effect on the next scoring call
-- everywhere.
CREATE OR REPLACE FUNCTION scoring.set_scoring_path(model_name text, version integer, path text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    found_id bigint;
    has_compiled boolean;
    blob_format text;
BEGIN
    IF path IS NULL OR path NOT IN ({{SCORING_PATHS}}) THEN
        RAISE EXCEPTION 'scoring path must be ''sql'', ''compiled'' or ''sklearn'', not %', coalesce(quote_literal(path), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT m.model_id, m.compiled IS NOT NULL, m.format INTO found_id, has_compiled, blob_format
      FROM scoring.models m WHERE m.name = model_name AND m.version = set_scoring_path.version;
    IF found_id IS NULL THEN
        RAISE EXCEPTION 'model % has no version %', quote_literal(model_name), version
            USING ERRCODE = 'undefined_object',
                  HINT = format('list the versions with: pgscore models --name %s', model_name);
    END IF;
    -- What the CHECK models_path_reads_format says, in words.
    IF (path = 'sklearn' AND blob_format NOT IN ('joblib', 'skops')) OR (path = 'onnx' AND blob_format <> 'onnx') THEN
        RAISE EXCEPTION 'model % v% is stored as format % and cannot be scored on the % path',
                        quote_literal(model_name), version, blob_format, path
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = CASE blob_format
                      WHEN 'compiled' THEN 'it was converted at push (XGBoost, LightGBM): use the compiled or sql path'
                      WHEN 'onnx' THEN 'an ONNX model is scored on the onnx path (or compiled, if push compiled it)'
                      ELSE 'the onnx path scores ONNX models only' END;
    END IF;
    IF path IN ({{COMPILED_PATHS}}) AND NOT has_compiled THEN
        RAISE EXCEPTION 'model % v% has no compiled form', quote_literal(model_name), version
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'see path_note in pgscore models for why it could not be compiled';
    END IF;
    IF path = 'sql' THEN
        -- Raises, naming the reason, when plain SQL cannot express the model exactly.
        PERFORM scoring.sql_expression(found_id);
    END IF;
    PERFORM scoring._require_loadable(found_id, path);
    UPDATE scoring.models m SET scoring_path = path,
           path_note = concat_ws('; ', m.path_note, format('set to %s by %s at %s', path, session_user, now()))
     WHERE m.model_id = found_id;
    RETURN found_id;
END
$$;
COMMENT ON FUNCTION scoring.set_scoring_path(text, integer, text) IS 'forces the sql, compiled or scikit-learn evaluation of a model version';
