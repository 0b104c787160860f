"""Schemas shared by every domain: the error body and the pagination envelope."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from pydantic import BaseModel, ConfigDict

__all__ = ["ErrorBody", "ErrorResponse", "Schema", "error_responses", "json_response"]


class Schema(BaseModel):
    """Base of response schemas: readable from ORM objects."""

    model_config = ConfigDict(from_attributes=True)


class ErrorBody(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorResponse(BaseModel):
    """The one shape of every error response."""

    error: ErrorBody


def error_responses(*status_codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entry documenting the error shape for the given status codes.

    401 and 422 are added to every route that uses it (every non-health route needs a key and takes input).
    """
    descriptions = {
        400: "Bad request",
        401: "Missing or invalid API key",
        404: "Not found (or owned by another tenant)",
        409: "Conflict with the resource's current state",
        413: "Upload too large",
        415: "Not a safetensors file",
        422: "Invalid input",
        503: "Not ready",
    }
    codes = sorted({401, 422, *status_codes})
    return {code: {"model": ErrorResponse, "description": descriptions.get(code, "Error")} for code in codes}


def json_response(model: BaseModel, status_code: int = 200) -> Response:
    """Serialize ``model`` once, straight to JSON (route handlers on hot paths return this; the route's
    ``response_model`` still documents the body)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")
