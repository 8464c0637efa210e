"""The web page for the quality engineer, on the scoring service."""
