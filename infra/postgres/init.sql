-- The compose Postgres's databases, created on its first start (an empty data volume):
--   mlflow       MLflow's tracking store and model registry
--   feast        Feast's SQL registry (feature_repo/feature_store.production.yaml)
--   predictions  the model services' prediction log (services/predlog.py)
-- The owner is POSTGRES_USER (.env), which the entrypoint runs this file as.
CREATE DATABASE mlflow;
CREATE DATABASE feast;
CREATE DATABASE predictions;
