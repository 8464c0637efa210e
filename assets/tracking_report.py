"""The solution's tracking hook (:mod:`alo.tracking` imports ``{package}.tracking_report``)."""

from assets.vad.tracking_report import log_model, report

__all__ = ["log_model", "report"]
