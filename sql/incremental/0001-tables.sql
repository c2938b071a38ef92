-- 0001: the reference application tables, the scoring schema and its tables.
-- Released revisions never change: new columns and tables go in a new file.

CREATE SCHEMA scoring;
COMMENT ON SCHEMA scoring IS 'pgscore: churn models, their deployments and in-database scoring';

CREATE TABLE public.customer_profiles (
    customer_id        bigint PRIMARY KEY,
    gender             text CHECK (gender IN ('Female', 'Male')),
    senior_citizen     boolean,
    partner            boolean,
    dependents         boolean,
    tenure_months      integer CHECK (tenure_months >= 0),
    phone_service      boolean,
    multiple_lines     text CHECK (multiple_lines IN ('Yes', 'No', 'No phone service')),
    internet_service   text CHECK (internet_service IN ('DSL', 'Fiber optic', 'No')),
    online_security    text CHECK (online_security IN ('Yes', 'No', 'No internet service')),
    online_backup      text CHECK (online_backup IN ('Yes', 'No', 'No internet service')),
    device_protection  text CHECK (device_protection IN ('Yes', 'No', 'No internet service')),
    tech_support       text CHECK (tech_support IN ('Yes', 'No', 'No internet service')),
    streaming_tv       text CHECK (streaming_tv IN ('Yes', 'No', 'No internet service')),
    streaming_movies   text CHECK (streaming_movies IN ('Yes', 'No', 'No internet service')),
    contract           text CHECK (contract IN ('Month-to-month', 'One year', 'Two year')),
    paperless_billing  boolean,
    payment_method     text CHECK (payment_method IN ('Electronic check', 'Mailed check',
                                                      'Bank transfer (automatic)', 'Credit card (automatic)')),
    monthly_charges    numeric(10,2),
    total_charges      numeric(12,2),
    complaint_count    integer NOT NULL DEFAULT 0 CHECK (complaint_count >= 0),
    churn_score        double precision CHECK (churn_score BETWEEN 0 AND 1),
    churn_model_id     bigint,
    churn_scored_at    timestamptz
);
COMMENT ON COLUMN public.customer_profiles.complaint_count IS 'maintained by the scoring trigger on complaints only';
COMMENT ON COLUMN public.customer_profiles.churn_score IS 'probability of churn from scoring.models.model_id = churn_model_id';

CREATE TABLE public.complaints (
    complaint_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id   bigint NOT NULL REFERENCES public.customer_profiles,
    created_at    timestamptz NOT NULL DEFAULT now(),
    channel       text,
    category      text,
    body          text
);
CREATE INDEX complaints_customer_id_idx ON public.complaints (customer_id);

CREATE TABLE scoring.models (
    model_id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    version        integer NOT NULL CHECK (version >= 1),
    format         text NOT NULL CHECK (format IN ('joblib', 'skops', 'onnx')),
    blob           bytea NOT NULL,
    -- The database itself refuses a blob whose digest is not the one given.
    sha256         text NOT NULL CHECK (sha256 = encode(sha256(blob), 'hex')),
    feature_names  text[] NOT NULL CHECK (cardinality(feature_names) > 0),
    runtime        jsonb NOT NULL DEFAULT '{}',
    -- The same model as plain arrays (pgscore.compile), scored with numpy
    -- alone and never unpickled; NULL when the pipeline is not supported.
    compiled       bytea,
    scoring_path   text NOT NULL DEFAULT 'sklearn' CHECK (scoring_path IN ('compiled', 'sklearn')),
    path_note      text,
    CHECK (scoring_path <> 'compiled' OR compiled IS NOT NULL),
    metrics        jsonb NOT NULL DEFAULT '{}',
    note           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    created_by     text NOT NULL DEFAULT current_user,
    UNIQUE (name, version)
);
COMMENT ON TABLE scoring.models IS 'one row per pushed model version; push with `pgscore push`';

CREATE TABLE scoring.deployments (
    deployment_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name           text NOT NULL,
    model_id       bigint NOT NULL REFERENCES scoring.models,
    action         text NOT NULL DEFAULT 'activate' CHECK (action IN ('activate', 'rollback')),
    activated_at   timestamptz NOT NULL DEFAULT clock_timestamp(),
    activated_by   text NOT NULL DEFAULT current_user
);
COMMENT ON TABLE scoring.deployments IS 'append-only history of activations; the latest row per name is the active model';
CREATE INDEX deployments_name_latest_idx ON scoring.deployments (name, deployment_id DESC);

CREATE TABLE scoring.errors (
    error_id     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    model_id     bigint,
    customer_id  bigint,
    sqlstate     text NOT NULL,
    message      text NOT NULL
);
COMMENT ON TABLE scoring.errors IS 'scoring failures that did not abort the insert (scoring.on_error = keep)';

-- The in-database Python (plpython/ in the repository), stored by the
-- migrations so that the server never runs code from its file system that
-- the schema did not install. Loaded by scoring._load_runtime().
CREATE TABLE scoring.runtime_modules (
    module  text PRIMARY KEY,
    source  text NOT NULL
);
