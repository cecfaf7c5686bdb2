"""``leakyspanner inspect PATH``: serve the local web dashboard for a log file or a directory of sessions."""

from __future__ import annotations

import argparse
import ipaddress
import socket
import threading
import time
from collections.abc import Callable

__all__ = ["add_arguments", "allowed_hosts", "dashboard_url", "is_loopback", "run"]

_DEFAULT_PORT = 8787
_WILDCARDS = ("0.0.0.0", "::", "")


def _port(text: str) -> int:
    """argparse type: a TCP port number, 0 for any free one."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port number from 0 to 65535 (0: any free port), got {text!r}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="a session .jsonl/.log file, or a directory of them")
    parser.add_argument("--port", type=_port, default=_DEFAULT_PORT,
                        help=f"port to serve on (default {_DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: only this machine can connect)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    parser.add_argument("--no-follow", action="store_true",
                        help="load once; do not reload session files that are still being written")


def is_loopback(host: str) -> bool:
    """True for addresses only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str) -> list[str] | None:
    """Host names to answer besides the usual loopback names: the address bound (``*`` for a wildcard).

    The URL printed names the bound address, so the Host header the browser sends
    for it must pass: ``--host 127.0.0.2`` answers to ``127.0.0.2:PORT``.
    """
    if host in _WILDCARDS:
        return ["*"]
    name = f"[{host.strip('[]')}]" if ":" in host else host
    return None if name.lower() in ("127.0.0.1", "localhost", "[::1]") else [name]


def dashboard_url(host: str, port: int) -> str:
    """The URL to open: wildcard binds are reached through 127.0.0.1, IPv6 hosts get brackets."""
    if host in _WILDCARDS:
        host = "127.0.0.1"
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}/"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as exc:
        sock.close()
        from ..errors import LeakyspannerError

        hint = " (pass --port 0 for any free port)" if port else ""
        raise LeakyspannerError(f"cannot serve on {host}:{port}: {exc.strerror or exc}{hint}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _open_when_started(server: object, url: str, opener: Callable[[str], object]) -> threading.Thread:
    def wait_then_open() -> None:
        deadline = time.monotonic() + 30
        while not getattr(server, "started", False) and time.monotonic() < deadline:
            if getattr(server, "should_exit", False):
                return
            time.sleep(0.05)
        if getattr(server, "started", False):
            opener(url)

    thread = threading.Thread(target=wait_then_open, name="leakyspanner-browser", daemon=True)
    thread.start()
    return thread


def run(args: argparse.Namespace) -> int:
    from ..errors import require_extra

    require_extra("ui", "pandas", "starlette", "uvicorn")
    import webbrowser

    import uvicorn

    from ..ui.server import create_app

    host = args.host
    loopback = is_loopback(host)
    app = create_app(args.path, follow=not args.no_follow, allowed_hosts=allowed_hosts(host))
    sock = _bind(host, args.port)
    url = dashboard_url(host, sock.getsockname()[1])
    sessions = len(app.state.dashboard.session_ids)
    print(f"leakyspanner dashboard for {args.path} ({sessions} session{'s' if sessions != 1 else ''}): {url}")
    if not loopback:
        print(f"Warning: bound to {host}, not a loopback address. The dashboard shows file paths and "
              "allocation sites of your code to anyone on that network who can reach this port.")
    print("Press Ctrl-C to stop.", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
    if not args.no_browser:
        _open_when_started(server, url, webbrowser.open)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after shutting down cleanly
        pass
    finally:
        sock.close()
    return 0
