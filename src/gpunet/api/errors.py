"""Every error answers as JSON naming the field and the reason, and the OpenAPI document
says so."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gpunet.errors import GpunetError
from gpunet.wire import ERROR_DESCRIPTIONS, ErrorEnvelope

_ENVELOPE_REF = "#/components/schemas/ErrorEnvelope"


def install(app: FastAPI) -> None:
    """Answer every error with the envelope, and declare it in the OpenAPI document."""
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]

    @app.exception_handler(GpunetError)
    async def _gpunet(_: Request, exc: GpunetError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0]
        raw = tuple(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "json_invalid":
            # the loc holds the character offset, not a field
            pos = raw[1] if len(raw) > 1 else "?"
            detail = (err.get("ctx") or {}).get("error") or msg
            raw, msg = ("body",), f"malformed JSON at character {pos}: {detail}"
        loc = [str(p) for p in raw if p not in ("body", "query", "path", "header")]
        field = ".".join(loc) or ("body" if raw[:1] == ("body",) else None)
        body = {
            "error": {
                "code": "invalid",
                "message": f"{field}: {msg}" if field else msg,
                "field": field,
            }
        }
        return JSONResponse(body, status_code=422)

    @app.exception_handler(HTTPException)
    async def _http(_: Request, exc: HTTPException) -> JSONResponse:
        body = {"error": {"code": "http", "message": str(exc.detail), "field": None}}
        return JSONResponse(body, status_code=exc.status_code)


def _error_response(status: int) -> dict[str, Any]:
    return {
        "description": ERROR_DESCRIPTIONS[status],
        "content": {"application/json": {"schema": {"$ref": _ENVELOPE_REF}}},
    }


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with the errors every operation can give declared as the envelope.

    FastAPI declares its own 422 model (``HTTPValidationError``) on each operation with inputs;
    the handler above answers those with the envelope, so the document must say so too. Rules
    that hold for every operation live here: a path id that names nothing is a 404; a body can
    be unreadable (400) or too large (413). Role and state errors are declared on the routers.
    """
    if app.openapi_schema:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    for item in doc.get("paths", {}).values():
        for op in item.values():
            responses: dict[str, Any] = op.setdefault("responses", {})
            declared = set()
            if "422" in responses:
                declared.add(422)
            if any(p.get("in") == "path" for p in op.get("parameters", [])):
                declared.add(404)
            if "requestBody" in op:
                declared |= {400, 413}
            for status in declared:
                responses[str(status)] = _error_response(status)
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    if "ErrorEnvelope" not in schemas:
        envelope = ErrorEnvelope.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(envelope.pop("$defs", {}))
        schemas["ErrorEnvelope"] = envelope
    app.openapi_schema = doc
    return doc
