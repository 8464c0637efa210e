"""The MLflow side: the pyfunc model and the tracking plugin the runner is given."""
