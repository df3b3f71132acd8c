"""The pages for people: the prediction page at /ui/, the API's documentation at /v1/docs, and
`/`, which sends a visitor to the prediction page.

The prediction page is a client of the V1 API like any other (`GET /v1/models` for the forms,
`POST /v1/models/<name>:predict` for the answers), so it has no routes of its own beyond the files.
Every asset of both pages is served from here (no CDN): they work offline and run under the
strict Content-Security-Policy of tabserve/security_headers.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
DOCS_DIR = WEB_DIR / "docs"
UI_PATH = "/ui"
DOCS_PATH = "/v1/docs"
# Swagger UI's files (swagger-ui-dist 5.x, Apache-2.0), as packaged by fastapi-offline (MIT).
SWAGGER_UI_ASSETS = ("fastapi_offline", "static")


def mount_pages(app: FastAPI) -> None:
    # html=True: /ui/ answers index.html.
    app.mount(UI_PATH, StaticFiles(directory=STATIC_DIR, html=True), name="ui")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def api_docs() -> FileResponse:
        return FileResponse(DOCS_DIR / "index.html")

    # Our initializer script first, then Swagger UI's bundle and stylesheet from the package.
    assets = StaticFiles(directory=DOCS_DIR, packages=[SWAGGER_UI_ASSETS])
    app.mount(f"{DOCS_PATH}/assets", assets, name="docs-assets")

    # BentoML serves its own Swagger UI at / (it loads Google Tag Manager, and its /docs.json
    # refers to request schemas it lacks). BentoML routes a path to our app first when our app
    # has a route for it, so these routes replace its page, its document and its assets.
    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        # Relative, so it keeps working behind a path prefix, like the page's own API calls.
        return RedirectResponse(f"{UI_PATH.lstrip('/')}/")

    for path in ("/docs.json", "/static_content/{path:path}"):
        app.add_route(path, _bentoml_docs_gone, include_in_schema=False)


async def _bentoml_docs_gone(_: Request) -> NoReturn:
    raise HTTPException(404, f"Not Found; the API is documented at {DOCS_PATH}")
