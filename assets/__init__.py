"""The VAD solution: one module per pipeline step, and the library they share (``assets.vad``)."""
