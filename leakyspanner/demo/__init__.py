"""The bundled example: an OCR-ish FastAPI service with two real leaks, its traffic and its runner.

Needs the ``[demo]`` extra (fastapi, uvicorn, httpx). ``leakyspanner demo``
is the way in; the submodules are imported only when used:

* :mod:`leakyspanner.demo.app` - ``create_app(fixed=False, ...)`` and the ``app`` uvicorn serves
* :mod:`leakyspanner.demo.traffic` - ``run_traffic(base_url, seconds)``
* :mod:`leakyspanner.demo.runner` - ``run_demo(seconds=30)``: real server, traffic, session files
"""

from __future__ import annotations

__all__: list[str] = []
