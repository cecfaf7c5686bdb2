"""Helpers for capture tests: read a session's files without the analysis extra."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from leakyspanner.schema import REQUEST_FIELDS, REQUEST_TAG


def read_jsonl(path: Path | str) -> dict[str, list[Any]]:
    """Records of a .jsonl grouped by kind; request arrays become dicts."""
    out: dict[str, list[Any]] = {}
    for line in Path(path).read_text().splitlines():
        value = json.loads(line)
        if isinstance(value, list):
            assert value[0] == REQUEST_TAG
            out.setdefault("request", []).append(dict(zip(REQUEST_FIELDS, value[1:])))
        else:
            out.setdefault(value["kind"], []).append(value)
    return out


def only_session(directory: Path) -> tuple[Path, Path]:
    jsonl = sorted(directory.glob("*.jsonl"))
    logs = sorted(directory.glob("*.log"))
    assert len(jsonl) == 1 and len(logs) == 1, (jsonl, logs)
    return jsonl[0], logs[0]


def ping_app() -> Any:
    """A FastAPI app with one cheap endpoint, ``GET /ping``."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, bool]:
        return {"ok": True}

    return app
