"""The API's wire shapes as pydantic models: what ``/openapi.json`` documents and what the routes answer.

Every request body, response body, content type and error status of the API is declared here, so that a client
generated from the OpenAPI document can call every route (``tests/test_openapi_contract.py`` runs schemathesis
against the served API to hold the document to the wire).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from vad.ood.verdict import OodAction

# The formats an upload may be (decoded by content, :func:`vad.images.decode_image`), as the parts' media types.
IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/tiff", "image/webp")


def json_number(value: float | None) -> float | None:
    """A float as JSON can carry it: None for NaN or infinity (an ``ood_score`` the check could not measure).

    Args:
        value: The float, or None.

    Returns:
        The value, or None where it is not finite.
    """
    return value if value is not None and math.isfinite(value) else None


class ErrorBody(BaseModel):
    """Every error the API answers: one line, never a stack trace."""

    error: str = Field(description="What went wrong and what to send instead, in one line")


class PathsRequest(BaseModel):
    """A predict request naming images inside the server's data folder (``--data-root``)."""

    paths: list[str] = Field(
        min_length=1,
        description="Image files, relative to the server's data folder (or absolute inside it)",
        examples=[["ok_0.png", "line-2/ng_1.png"]],
    )


class PredictRow(BaseModel):
    """One image's result: the ``output.csv`` columns (and the heatmap picture when asked for)."""

    image: str = Field(description="The uploaded file name, or the path as sent")
    raw_score: float = Field(description="The model's own score")
    anomaly_score: float = Field(description="The score normalised so that the trained threshold is 0.5")
    pred_label: str = Field(
        description="The OK class name or the NG name; 'rejected' when the plan's ood_action is reject and the image "
        "is out of distribution (the verdict is withheld: a person should look at it)"
    )
    certainty: float = Field(description="1 when sure, 0 at the threshold (0 for a rejected image)")
    is_anomalous: bool = Field(
        description="Whether anomaly_score reaches the inference threshold (true for a rejected image: never passed)"
    )
    ood_score: float | None = Field(
        description="Distance to the training images over the out-of-distribution threshold: 1 or more is out of "
        "distribution; null when the model has no out-of-distribution check (or the distance could not be measured)"
    )
    in_distribution: bool | None = Field(
        description="False when the image is not the kind of image the model was trained on (ood_score 1 or more): "
        "its verdict cannot be trusted; null when the model has no out-of-distribution check"
    )
    heatmap_png: str | SkipJsonSchema[None] = Field(  # absent, never null, without ?heatmap=true
        default=None,
        description="With ?heatmap=true: original | overlay | predicted region, a PNG picture in base64",
        json_schema_extra={"contentEncoding": "base64", "contentMediaType": "image/png"},
    )


class InferenceSummary(BaseModel):
    """A batch's summary in the ``inference_summary.yaml`` shape (:mod:`alo.summary`)."""

    date: str = Field(description="UTC, '%Y-%m-%d %H:%M:%S'")
    file_path: str
    note: str = Field(
        max_length=128,
        description="Model, image count, NG count and threshold; ', N out of distribution' when the model has a check",
    )
    probability: dict[str, float] = Field(description="Label -> probability, 2 decimals, summing to 1")
    result: str = Field(
        max_length=32,
        description="One image: its pred_label; several: counts per label ('good:12,bad:3', ',rejected:N' appended "
        "for the images withheld with ood_action reject)",
    )
    score: float = Field(ge=0.0, le=1.0)
    version: str


class PredictResponse(BaseModel):
    """The answer to ``POST /v1/predict``: one row per image, in the order sent."""

    results: list[PredictRow]
    summary: InferenceSummary | SkipJsonSchema[None] = Field(  # absent, never null, without ?summary=true
        default=None, description="With ?summary=true: the batch's summary"
    )


class ModelInfo(BaseModel):
    """The resident model."""

    model_name: str
    backbone: str
    layers: list[str]
    input_size: list[int] = Field(description="(height, width) the images are resized to")
    raw_threshold: float = Field(description="The raw score from which an image is NG as trained")
    inference_threshold: float = Field(description="The normalised score from which an image is NG")
    ok_name: str
    ng_name: str
    train_id: str | None = Field(description="The train run of the model (null when unknown)")
    ood_check: bool = Field(description="Whether the model has an out-of-distribution check (ood_score answered)")
    ood_action: OodAction = Field(
        description="What an out-of-distribution image becomes: flag (in_distribution false, the verdict kept) or "
        "reject (pred_label 'rejected', the verdict withheld)"
    )


class Health(BaseModel):
    """Liveness."""

    status: Literal["ok"]


class Readiness(BaseModel):
    """Readiness: ``ready``, or ``not ready`` with the reason."""

    status: Literal["ready", "not ready"]
    error: str | SkipJsonSchema[None] = Field(default=None, description="Why the model cannot load (when not ready)")


_REASONS = {
    400: "A body that is not what the route takes, or more images than one request may carry",
    401: "Missing or wrong token, where the server has one (VAD_API_TOKEN)",
    403: "A path outside the server's data folder, or no data folder to read paths from",
    404: "A path that names no file in the data folder",
    413: "A request body over the server's limit (--max-upload-mb)",
    415: "A body that is neither multipart/form-data nor JSON, or a file that is not a readable image",
    422: "A query parameter of the wrong type",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` of a route for its error statuses, each an :class:`ErrorBody`.

    Args:
        *statuses: HTTP statuses the route may answer with an error.

    Returns:
        FastAPI ``responses`` entries.
    """
    return {status: {"model": ErrorBody, "description": _REASONS[status]} for status in statuses}


def predict_body(max_images: int) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of ``POST /v1/predict``: multipart uploads or JSON paths.

    The route reads the body itself (one route, two content types, with the body limit and the image count
    checked while it is received), so the body is declared here rather than by a parameter.

    Args:
        max_images: Most images one request may carry.

    Returns:
        The operation's ``openapi_extra``.
    """
    upload = {
        "type": "object",
        "properties": {
            "files": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "minItems": 1,
                "maxItems": max_images,
                "description": "The images (PNG, JPEG, BMP, TIFF or WebP; decoded by content, not by name)",
            }
        },
        "required": ["files"],
    }
    paths = PathsRequest.model_json_schema()
    paths["properties"]["paths"]["maxItems"] = max_images
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": upload,
                    "encoding": {"files": {"contentType": ", ".join(IMAGE_MEDIA_TYPES)}},
                },
                "application/json": {"schema": paths},
            },
        }
    }
