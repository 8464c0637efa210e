"""Exports of a trained model: the traced graph, int8 quantisation, the gates, the writer, and the torch-free runtime.

Nothing is imported here: :mod:`vad.export.runtime` runs on an edge install without torch, so importing it must not
pull in the modules that trace and quantise (they need torch).
"""
