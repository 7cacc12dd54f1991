"""``GET /``: a page to try the served models in a browser (``catdog/serving/static/index.html``).

The page is one self-contained HTML file (its CSS and JavaScript inline, nothing fetched from elsewhere):
it reads ``/health`` for the models and posts the chosen image to every ``/predict/<name>``.
"""

from __future__ import annotations

from importlib.resources import files

import litserve as ls
from starlette.responses import HTMLResponse

#: Where the page comes from inside the package (shipped as package data).
PAGE = files("catdog.serving") / "static" / "index.html"

#: The page may load nothing from elsewhere: its own inline script and style, images it made itself.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src blob: data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def mount(server: ls.LitServer) -> None:
    """Serve the page at ``GET /`` (and ``HEAD /``), in place of LitServe's own ``litserve running`` there."""
    html = PAGE.read_text(encoding="utf-8")

    async def page() -> HTMLResponse:
        return HTMLResponse(html, headers=SECURITY_HEADERS)

    router = server.app.router
    router.routes = [route for route in router.routes if getattr(route, "path", None) != "/"]
    server.app.add_api_route("/", page, methods=["GET", "HEAD"], include_in_schema=False)
