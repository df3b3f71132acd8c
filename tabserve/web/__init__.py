"""The prediction page for people: static HTML, JavaScript and CSS served at /ui/.

The page is a client of the V1 API like any other (`GET /v1/models` for the forms,
`POST /v1/models/<name>:predict` for the answers), so it has no routes of its own beyond the files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
UI_PATH = "/ui"  # BentoML serves its own page at /


def mount_ui(app: FastAPI) -> None:
    # html=True: /ui/ answers index.html.
    app.mount(UI_PATH, StaticFiles(directory=STATIC_DIR, html=True), name="ui")
