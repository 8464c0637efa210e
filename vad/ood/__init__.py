"""Out-of-distribution check: whether an image is the kind the model was trained on (see :mod:`vad.ood.check`)."""

from vad.ood.check import OOD_FILE, OodCheck

__all__ = ["OOD_FILE", "OodCheck"]
