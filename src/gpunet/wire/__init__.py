"""Models of what travels on the wire, as the OpenAPI document declares them.

This package is the one home of the wire contract: the error envelope and input bounds here,
and a module per party beside it.

Every error answers as one envelope, ``{"error": {"code", "message", "field"}}`` (see
``api/errors.py``); the document declares it for each status an operation can give.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, Field

# What the store's integer columns hold: a bigger number must be refused as input, not be
# left to overflow in the database (PostgreSQL refuses it there with a server error).
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
Int32 = Annotated[int, Field(ge=-(2**31), le=INT32_MAX)]
Int64 = Annotated[int, Field(ge=-(2**63), le=INT64_MAX)]


class ErrorDetail(BaseModel):
    """What went wrong: a stable code, a sentence, and the input field at fault if any."""

    code: str = Field(description="stable machine-readable code, e.g. invalid, not_found")
    message: str = Field(description="what went wrong, naming the field and the reason")
    field: str | None = Field(description="the request field at fault (dotted path), if any")


class ErrorEnvelope(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be read (not UTF-8, not JSON)",
    401: "No token, or a token that is unknown, revoked or expired",
    403: "The token's role or account may not do this",
    404: "A named object does not exist or is not visible to the caller",
    409: "The current state does not allow this change",
    413: "The request body is over the coordinator's limit",
    422: "An input is invalid: the error names the field and the reason",
    429: "Too many requests: try again later",
    502: "A service's replica failed while answering",
    503: "Unavailable now (no replica of a service ready, a storage service behind the "
    "coordinator failing): try again later",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """A ``responses=`` dict declaring the error envelope for each status code."""
    return {c: {"model": ErrorEnvelope, "description": ERROR_DESCRIPTIONS[c]} for c in codes}


# every route behind a bearer token
AUTHENTICATED = errors(401, 403)


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The model's JSON schema with its nested models written in place (no ``$defs``), fit
    for ``openapi_extra`` where the document's components cannot be reached."""
    schema = model.model_json_schema()
    defs: dict[str, Any] = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    out: dict[str, Any] = resolve(schema)
    return out


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` declaring a JSON body of ``model`` for a route that reads it itself."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": inline_schema(model)}},
        }
    }
