"""Every error answers as JSON naming the field and the reason."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from gpunet.errors import GpunetError


def install(app: FastAPI) -> None:
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
