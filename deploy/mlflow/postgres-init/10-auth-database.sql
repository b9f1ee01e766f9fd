-- Runs once, when the postgres_data volume is first initialised: MLflow's user store gets its own
-- database beside the tracking database (POSTGRES_DB), owned by the same role.
CREATE DATABASE mlflow_auth;
