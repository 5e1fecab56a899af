"""The chat web page (`--webui`): one static file at `GET /webui`, and at `GET /` for a browser.

`POST /` stays the ChatLLM API; only a GET whose Accept names text/html gets the page there. The
page is served without the token (the user types it into the page), so auth opens exactly these
GETs; the API calls the page makes carry the token like any other client's.
"""

from __future__ import annotations

import logging
from importlib import resources

from fastapi import APIRouter, Request
from starlette.exceptions import HTTPException
from starlette.responses import Response

log = logging.getLogger(__name__)

WEBUI_PATH = "/webui"
PAGE_PATHS = (WEBUI_PATH, "/")
# Everything the page needs is inline or on this origin; the policy keeps it that way.
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'"
    ),
}


def webui_router() -> APIRouter:
    page = (resources.files("runtime") / "static" / "webui.html").read_bytes()
    router = APIRouter()

    async def webui() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    async def root(request: Request) -> Response:
        if "text/html" not in request.headers.get("accept", ""):
            # What `GET /` answered before the page existed: the route only takes POST.
            raise HTTPException(405, "Method Not Allowed")
        return await webui()

    router.add_api_route(WEBUI_PATH, webui, methods=["GET"], include_in_schema=False)
    router.add_api_route("/", root, methods=["GET"], include_in_schema=False)
    return router
