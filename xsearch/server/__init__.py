"""`xsearch serve`: a FastAPI app (JSON API under /api, a web page at /) over the engine surface, read-only.

``create_app(home, collections, token)`` builds the app; :func:`serve` runs it with uvicorn. Needs the ``serve``
extra (fastapi, uvicorn, python-multipart): ``pip install -e ".[serve]"``.
"""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Any, Callable

from ..errors import BadInput, MissingDependency

EXTRA_HINT = 'pip install -e ".[serve]"'


def _require() -> None:
    """MissingDependency naming the extra when fastapi/uvicorn/python-multipart are not installed."""
    import importlib.util

    missing = [m for m in ("fastapi", "uvicorn", "multipart") if importlib.util.find_spec(m) is None]
    if missing:
        names = ", ".join("python-multipart" if m == "multipart" else m for m in missing)
        raise MissingDependency(f"xsearch serve needs {names}: {EXTRA_HINT}")


def create_app(home: str | os.PathLike[str], collections: list[str] | None = None, token: str | None = None,
               **options: Any):
    """The FastAPI app serving ``collections`` of ``home`` (see :func:`xsearch.server.app.create_app`)."""
    _require()
    from .app import create_app as build

    return build(home, collections, token, **options)


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(home: str | os.PathLike[str], collections: list[str] | None = None, host: str = "127.0.0.1",
          port: int = 8000, token: str | None = None, say: Callable[[str], None] = print,
          ray: str | None = None) -> None:
    """Run the server until interrupted. A non-loopback ``host`` needs a ``token``."""
    _require()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch/FAISS load: idle OpenMP threads sleep, not spin,
    from .state import check_names  # so concurrent requests do not starve each other of cores

    if not is_loopback(host) and not token:
        raise BadInput(f"--host {host} exposes your collections beyond this machine: add --token SECRET "
                       "(clients send 'Authorization: Bearer SECRET')")
    check_names(Path(home), collections)
    app = create_app(home, collections, token, ray=ray)
    if not is_loopback(host):
        say(f"warning: serving on {host}:{port}, reachable from other machines; every /api request needs the token "
            f"(open http://{host}:{port}/?token=... once in a browser)")
    say(f"xsearch: http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/  (API docs at /docs; Ctrl-C stops)")
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
