"""``GET /docs``: Swagger UI rendering ``/openapi.json``, from assets this service serves itself.

The assets come from the swagger-ui-bundle-v2 package (Swagger UI 5, the first to read OpenAPI
3.1; swagger-ui-bundle 1.1 ships 4.15, which cannot), so the page works without reaching any
other site. Their folder names the Swagger UI version, and so do their URLs: a browser may keep
them for good, and an upgrade changes them.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope
from swagger_ui_bundle import swagger_ui_path

from shared.openapi import operation

VERSIONED = swagger_ui_path.name  # swagger-ui-5.31.0
ASSETS = f"/docs/static/{VERSIONED}"
# What the page loads, and nothing else of the package (its demo page would load a remote example).
SERVED = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
IMMUTABLE = "public, max-age=31536000, immutable"

# URLs relative to /docs, so the page also works behind a proxy that serves the API under a prefix.
# The operations' paths are absolute (/v1/orders/{{id}}) and the document names no server, so Swagger
# UI would send "Try it out" to the host's root: the page gives the document, as it loads it, one
# server, where the page itself was served from (behind /api: /api/v1/...). /openapi.json is left
# as it is: a relative server would mean the same, but every client would have to resolve it.
PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>orders-api</title>
<link rel="icon" type="image/png" href="{ASSETS[1:]}/favicon-32x32.png">
<link rel="stylesheet" href="{ASSETS[1:]}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS[1:]}/swagger-ui-bundle.js"></script>
<script>
const base = new URL(".", location.href).href.replace(/\\/$/, "");
fetch("openapi.json").then((answer) => answer.json()).then((spec) => {{
  spec.servers = [{{url: base}}];
  SwaggerUIBundle({{spec, dom_id: "#swagger-ui", deepLinking: true, displayOperationId: true}});
}});
</script>
</body>
</html>
"""


@operation("Swagger UI rendering the OpenAPI document (HTML)", tag="operations", responses={200: None})
async def docs_page(request: Request) -> Response:
    return HTMLResponse(PAGE)


class Assets(StaticFiles):
    """The files of ``SERVED``, cacheable for good; any other name is a 404."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        if path not in SERVED:
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        response.headers["Cache-Control"] = IMMUTABLE
        return response


ROUTES: list[BaseRoute] = [
    Route("/docs", docs_page, methods=["GET"]),
    Mount(ASSETS, Assets(directory=swagger_ui_path)),
]
