"""The chat page: GET / and GET /static/{name}, from server/static.

No API key is needed to load it; its requests to /v1/ send the key the
user types into it.
"""

from __future__ import annotations

import functools
import os

from fastapi import APIRouter
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}
# The page loads nothing from elsewhere; this holds it to that even if a
# reply ever slipped markup past the renderer.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

router = APIRouter()


@functools.cache
def files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: name -> (body, media type)."""
    out = {}
    for name in sorted(os.listdir(STATIC_DIR)):
        ext = os.path.splitext(name)[1]
        if ext in _TYPES:
            with open(os.path.join(STATIC_DIR, name), "rb") as f:
                out[name] = (f.read(), _TYPES[ext])
    if "index.html" not in out:
        raise RuntimeError(f"the chat page is missing from {STATIC_DIR}")
    return out


def _file(name: str) -> Response:
    body, media_type = files()[name]
    return Response(
        body,
        media_type=media_type,
        headers={"Cache-Control": "no-cache", "Content-Security-Policy": _CSP},
    )


@router.get("/")
async def index() -> Response:
    return _file("index.html")


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    if name not in files():
        raise StarletteHTTPException(404)
    return _file(name)
