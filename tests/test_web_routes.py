"""The page's routers guard every route by construction (in this process, no model, no browser)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import asgi_get

from apps.http import api
from apps.web import pages, state, ui_api
from apps.web.app import UiContext, add_ui


def _calls(route) -> set:
    return {dependency.call for dependency in route.dependant.dependencies}


def test_every_route_of_the_page_routers_has_its_guard():
    assert ui_api.router.routes and pages.pages.routes
    for route in ui_api.router.routes:
        assert state.require_login in _calls(route), route.path
        if "POST" in route.methods:
            assert state.require_csrf in _calls(route), route.path
    for route in pages.pages.routes:
        assert state.require_page_login in _calls(route), route.path
    assert {route.path for route in pages.public.routes} == {"/", "/ui/static/{name}", "/ui/login"}


def test_a_route_added_later_needs_the_token_and_the_page_is_not_in_the_api_document(tmp_path: Path):
    @ui_api.router.get("/added-later")
    async def added_later() -> dict:
        return {"reached": True}

    @pages.pages.get("/added-later")
    async def added_page() -> dict:
        return {"reached": True}

    try:
        app = api.create_app(lambda: None, api.ServeSettings(token="t"))
        inner = app.app.app  # the FastAPI app inside the body limit and the metrics
        add_ui(inner, inner.state.batcher, UiContext(tmp_path, tmp_path / "plan.yaml", tmp_path, None), "t", 4, "1")
        status, _, body = asgi_get(app, "/ui/api/added-later")
        assert status == 401 and "token" in json.loads(body)["error"]
        status, headers, _ = asgi_get(app, "/ui/added-later")
        assert status == 303 and headers["location"] == "/ui/login"
        status, headers, _ = asgi_get(app, "/ui/login")
        assert status == 200 and "script-src 'self'" in headers["content-security-policy"]
        document = json.loads(asgi_get(app, "/openapi.json")[2])
        assert not [path for path in document["paths"] if path.startswith("/ui") or path == "/"]
    finally:
        ui_api.router.routes[:] = [r for r in ui_api.router.routes if not r.path.endswith("/added-later")]
        pages.pages.routes[:] = [r for r in pages.pages.routes if not r.path.endswith("/added-later")]
