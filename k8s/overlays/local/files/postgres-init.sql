-- The compose Postgres's databases, created on its first start (an empty data volume):
--   mlflow       MLflow's tracking store and model registry
--   feast        Feast's SQL registry (feature_repo/feature_store.production.yaml)
--   predictions  the model services' prediction log (services/predlog.py)
-- The owner is POSTGRES_USER (.env), which the entrypoint runs this file as (psql -f, so
-- psql's meta-commands work). The prediction log gets its table, its indexes and a role per
-- service, each allowed only what that service does:
--   predictions_writer  the model services (SERVE_PREDICTION_LOG): INSERT, nothing else
--   predictions_drift   the drift service (DRIFT_PREDICTION_LOG): SELECT, and DELETE for
--                       the retention (DRIFT_LOG_RETENTION_S, DRIFT_LOG_MAX_ROWS)
-- Their passwords come from the environment, as POSTGRES_PASSWORD does:
-- PREDICTIONS_WRITER_PASSWORD and PREDICTIONS_DRIFT_PASSWORD (a role whose variable is unset
-- or empty cannot log in). Every step is idempotent: on an existing volume, rerun it as the
--   docker compose exec -e PREDICTIONS_WRITER_PASSWORD -e PREDICTIONS_DRIFT_PASSWORD \
--       postgres psql -U "$POSTGRES_USER" -f /docker-entrypoint-initdb.d/init.sql
-- owner to add what an older version lacks (the roles, the ts index: built CONCURRENTLY,
-- so the services keep writing meanwhile). psql -v overrides the names (the tests do).
\set ON_ERROR_STOP on
\if :{?predictions_db}
\else
\set predictions_db predictions
\endif
\if :{?writer_role}
\else
\set writer_role predictions_writer
\endif
\if :{?drift_role}
\else
\set drift_role predictions_drift
\endif

SELECT format('CREATE DATABASE %I', db)
FROM unnest(ARRAY['mlflow', 'feast', :'predictions_db']) AS db
WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = db) \gexec
-- only the owner and the roles granted below connect (PUBLIC may by default)
REVOKE CONNECT, TEMPORARY ON DATABASE mlflow, feast, :"predictions_db" FROM PUBLIC;

-- The prediction log: what follows runs in its database
\connect :"predictions_db"

\getenv writer_password PREDICTIONS_WRITER_PASSWORD
\getenv drift_password PREDICTIONS_DRIFT_PASSWORD
\if :{?writer_password}
\else
\set writer_password ''
\endif
\if :{?drift_password}
\else
\set drift_password ''
\endif
SELECT format('CREATE ROLE %I NOLOGIN', role)
FROM unnest(ARRAY[:'writer_role', :'drift_role']) AS role
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) \gexec
SELECT format('ALTER ROLE %I LOGIN PASSWORD %L', role, password)
FROM (VALUES (:'writer_role', :'writer_password'), (:'drift_role', :'drift_password'))
    AS given (role, password)
WHERE password <> '' \gexec

-- The same table and indexes as services/predlog.py's table_sql: the services' role may not
-- create them
CREATE TABLE IF NOT EXISTS predictions (
    id BIGSERIAL PRIMARY KEY,
    ts DOUBLE PRECISION NOT NULL,
    request_id TEXT NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    alias TEXT NOT NULL,
    route TEXT NOT NULL,
    records INTEGER NOT NULL,
    positions TEXT NOT NULL,
    inputs TEXT NOT NULL,
    outputs TEXT NOT NULL
);
-- the drift window: a model's latest rows
CREATE INDEX CONCURRENTLY IF NOT EXISTS predictions_model_id ON predictions (model, id);
-- the retention by age: the oldest rows first, without a scan
CREATE INDEX CONCURRENTLY IF NOT EXISTS predictions_ts ON predictions (ts);

GRANT CONNECT ON DATABASE :"predictions_db" TO :"writer_role", :"drift_role";
GRANT USAGE ON SCHEMA public TO :"writer_role", :"drift_role";
-- COPY ... FROM STDIN needs INSERT; the id's default, the sequence
GRANT INSERT ON predictions TO :"writer_role";
GRANT USAGE ON SEQUENCE predictions_id_seq TO :"writer_role";
GRANT SELECT, DELETE ON predictions TO :"drift_role";
