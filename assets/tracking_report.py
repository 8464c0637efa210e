"""The solution's tracking hook (:class:`alo.tracking.Tracker` imports ``{package}.tracking_report``)."""

from assets.vad.tracking_report import report

__all__ = ["report"]
