"""The OpenAPI document declares the error envelope for the errors each operation can give."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpers import auth, coordinator

ENVELOPE = {"$ref": "#/components/schemas/ErrorEnvelope"}


def _schema_of(op: dict[str, Any], status: str) -> Any:
    return op["responses"][status]["content"]["application/json"]["schema"]


def test_errors_are_declared_as_the_envelope(tmp_path: Path) -> None:
    with coordinator(f"sqlite:///{tmp_path / 'gpunet.db'}") as co:
        doc = co.c.get("/openapi.json").json()
        schemas = doc["components"]["schemas"]
        assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
        assert set(schemas["ErrorEnvelope"]["properties"]) == {"error"}
        detail = schemas["ErrorDetail"]
        assert set(detail["properties"]) == {"code", "message", "field"}
        assert set(detail["required"]) == {"code", "message", "field"}

        paths = doc["paths"]
        submit = paths["/v1/jobs"]["post"]
        for status in ("400", "401", "403", "413", "422"):
            assert _schema_of(submit, status) == ENVELOPE, status
        show = paths["/v1/jobs/{job_id}"]["get"]
        for status in ("401", "403", "404", "422"):
            assert _schema_of(show, status) == ENVELOPE, status
        assert "413" not in show["responses"]  # no body, nothing to be too large
        cancel = paths["/v1/jobs/{job_id}/cancel"]["post"]
        assert _schema_of(cancel, "409") == ENVELOPE
        finished = paths["/v1/agent/attempts/{attempt_id}/finished"]["post"]
        assert _schema_of(finished, "409") == ENVELOPE
        health = paths["/healthz"]["get"]
        assert set(health["responses"]) == {"200"}  # open to all, no inputs
        assert "text/plain" in paths["/metrics"]["get"]["responses"]["200"]["content"]

        # and what the document declares is what the API answers
        r = co.c.get("/v1/jobs", params={"limit": 0}, headers=auth(co.admin))
        assert r.status_code == 422
        assert r.json() == {
            "error": {"code": "invalid", "message": r.json()["error"]["message"], "field": "limit"}
        }
