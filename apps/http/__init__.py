"""The scoring service: FastAPI routes over the Detector, with a micro-batcher."""
