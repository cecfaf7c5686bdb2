"""One self-contained HTML file: the dashboard page with its script, styles and data inlined.

The file makes no network request, so it opens offline and can be attached to
a ticket. The data is embedded as JSON in a ``<script type="application/json">``
block with ``<``, ``>`` and ``&`` escaped as ``\\u003c``-style sequences, so a
route named ``</script>`` cannot end the block; the page reads it with
``JSON.parse`` and shows every string through text nodes. A CSP meta tag
allows exactly the inlined script and stylesheet, by hash.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import time
from pathlib import Path
from typing import Any

from leakyspanner.analysis.load import Sessions
from leakyspanner.formatting import units
from leakyspanner.ui import payloads

STATIC_DIR = Path(__file__).resolve().parent / "static"

__all__ = ["DATA_ID", "render_report", "report_data", "script_json"]

#: id of the embedded JSON block the page looks for.
DATA_ID = "leakyspanner-data"

_STYLESHEET_TAG = '<link rel="stylesheet" href="/static/app.css">'
_SCRIPT_TAG = '<script src="/static/app.js" defer></script>'
_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(data: Any) -> str:
    """JSON that is inert inside a ``<script>`` element: no ``<``, ``>`` or ``&`` survives."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return "".join(_JSON_ESCAPES.get(ch, ch) for ch in text) if any(
        ch in text for ch in _JSON_ESCAPES) else text


def report_data(sessions: Sessions, session_ids: list[str], *, root: str | None = None) -> dict[str, Any]:
    """What the page needs offline: list rows, details, every endpoint's distribution, first→last diff.

    ``root`` is the project folder the growing line's preview may be read from (default: the working directory).
    """
    data: dict[str, Any] = {"mode": "report", "generated_ts": time.time(), "sessions": [], "details": {},
                            "endpoints": {}, "diffs": {}, "units": units()}
    for sid in session_ids:
        verdict = payloads.verdict_or_error(sessions, sid)
        detail = payloads.session_detail(sessions, sid, verdict, root=root)
        data["sessions"].append(payloads.session_row(sessions, sid, verdict))
        data["details"][sid] = {**detail, "follow": False, "version": None}
        data["endpoints"][sid] = {
            f"{row['method']} {row['route']}":
                payloads.endpoint_distribution(sessions, sid, row["method"], row["route"], verdict)
            for row in detail["endpoints"]["rows"]}
        snapshots = detail["snapshots"]
        data["diffs"][sid] = {}
        if len(snapshots) >= 2:
            a, b = snapshots[0]["seq"], snapshots[-1]["seq"]
            data["diffs"][sid][f"{a}:{b}"] = payloads.snapshot_diff(sessions, sid, a, b)
    if len(session_ids) > 1:  # the sessions page: with sessions from several hosts, the verdict across them
        data["fleet"] = payloads.fleet_payload(sessions.select(*session_ids))
    names = ", ".join(session_ids)
    data["title"] = f"leakyspanner report: {names}"
    return data


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")


def _static(name: str) -> str:
    text = (STATIC_DIR / name).read_text(encoding="utf-8")
    closing = "</script" if name.endswith(".js") else "</style"
    if closing in text.lower() or "<!--" in text:
        raise RuntimeError(f"{name} cannot be inlined: it contains {closing!r} or '<!--'")
    return text


def render_report(sessions: Sessions, session_id: str | None = None, *, root: str | None = None) -> str:
    """The dashboard for one session (``session_id``, or every loaded session) as one HTML document.

    ``root``: the project folder whose ``.py`` files the growing line's preview may quote (default: the
    working directory).
    """
    known = sessions.session_ids
    if session_id is not None and session_id not in known:
        raise ValueError(f"session_id must be one of the loaded sessions ({', '.join(known)}), got {session_id!r}")
    ids = [session_id] if session_id is not None else known
    data = report_data(sessions, ids, root=root)
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")
    css, js = _static("app.css"), _static("app.js")
    if _STYLESHEET_TAG not in page or _SCRIPT_TAG not in page:
        raise RuntimeError("index.html no longer links app.css/app.js the way render_report expects")
    policy = (f"default-src 'none'; script-src '{_sha256(js)}'; style-src '{_sha256(css)}'; "
              "img-src data:; base-uri 'none'; form-action 'none'")
    page = page.replace('<meta charset="utf-8">', '<meta charset="utf-8">\n'
                        f'<meta http-equiv="Content-Security-Policy" content="{policy}">', 1)
    page = page.replace("<title>leakyspanner</title>", f"<title>{html.escape(data['title'])}</title>", 1)
    page = page.replace(_STYLESHEET_TAG, f"<style>{css}</style>", 1)
    page = page.replace(_SCRIPT_TAG + "\n", "", 1)
    page = page.replace("</body>", f'<script id="{DATA_ID}" type="application/json">{script_json(data)}</script>\n'
                        f"<script>{js}</script>\n</body>", 1)
    return page
