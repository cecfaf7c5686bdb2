"""The local web dashboard and the self-contained HTML report.

``create_app(path)`` serves sessions to a browser (``leakyspanner inspect``);
``render_report(sessions)`` writes the same page with one session's data
embedded, for attaching to a ticket. Both need the ``ui`` extra's pandas;
only the server needs Starlette and uvicorn.
"""

from leakyspanner.errors import require_extra

require_extra("ui", "pandas")

from leakyspanner.ui.html import render_report  # noqa: E402
from leakyspanner.ui.server import create_app  # noqa: E402

__all__ = ["create_app", "render_report"]
