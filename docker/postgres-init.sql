-- Run once by the postgres image on an empty volume: the SamuLLM store lives next to Airflow's
-- metadata, in its own database on the same server.
CREATE DATABASE samullm OWNER airflow;
