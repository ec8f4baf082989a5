"""MLflow: run identity and tags, the loggers, store checks, run figures and confusion
matrices."""
