"""The delivery apps over the library: the HTTP API, the web page, the MLflow model, the export command."""
