"""The page's HTML routes: server-rendered templates (``apps/web/templates``), its script and style sheet.

Two module-level routers: :data:`public` (the home redirect, the static files and the login form) and
:data:`pages`, whose own dependency sends a request without the token to ``/ui/login``.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from apps.http.auth import token_matches
from apps.web import runs
from apps.web.state import COOKIE, HERE, PageDep, UiError, require_page_login, same_origin
from apps.web.training import offered_models

STATIC = {
    "ui.js": "text/javascript; charset=utf-8",
    "review.js": "text/javascript; charset=utf-8",
    "versions.js": "text/javascript; charset=utf-8",
    "monitoring.js": "text/javascript; charset=utf-8",
    "ui.css": "text/css; charset=utf-8",
}

public = APIRouter(include_in_schema=False)
pages = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_page_login)])


@public.get("/")
async def home() -> Response:
    """The first page: Inspect."""
    return RedirectResponse("/ui/inspect", 303)


@public.get("/ui/static/{name}")
async def static(name: str) -> Response:
    """The page's script or style sheet (nothing else is served from the folder)."""
    if name not in STATIC:
        raise UiError(404, "no such file")
    return FileResponse(HERE / "static" / name, media_type=STATIC[name], headers={"Cache-Control": "max-age=300"})


@public.get("/ui/login")
async def login_page(request: Request, page: PageDep) -> Response:
    """The login form."""
    return page.render(request, "login.html", csrf="", message="")


@public.post("/ui/login")
async def login(request: Request, page: PageDep) -> Response:
    """Check the token from the form and keep it in an HttpOnly, SameSite=Strict cookie."""
    if not same_origin(request):
        raise UiError(403, "cross-site request refused")
    form = await request.form(max_files=0, max_fields=2)
    given = str(form.get("token", ""))
    if page.token is not None and not token_matches(given, page.token):
        return page.render(request, "login.html", 401, csrf="", message="wrong token")
    response = RedirectResponse("/ui/inspect", 303)
    if page.token is not None:
        response.set_cookie(COOKIE, given, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@pages.get("/inspect")
async def inspect_page(request: Request, page: PageDep) -> Response:
    """Score uploads or a server folder."""
    return page.render(request, "inspect.html", max_images=page.max_images)


@pages.get("/runs")
async def runs_page(request: Request, page: PageDep) -> Response:
    """The project's runs."""
    return page.render(request, "runs.html")


@pages.get("/runs/{pipeline}/{run_id}")
async def run_page(request: Request, page: PageDep, pipeline: str, run_id: str) -> Response:
    """One run: its output table, heatmaps and log."""
    run = runs.find_run(page.context.project, pipeline, run_id)
    if run is None:
        return page.render(request, "missing.html", what=f"{pipeline} run {run_id}")
    return page.render(request, "run.html", run=run.as_dict())


@pages.get("/threshold")
async def threshold_current(request: Request, page: PageDep) -> Response:
    """The threshold explorer of the served model's train run."""
    run = page.current_train()
    if run is None:
        return page.render(request, "missing.html", what="the train run of the served model")
    return RedirectResponse(f"/ui/threshold/{run.run_id}", 303)


@pages.get("/threshold/{run_id}")
async def threshold_page(request: Request, page: PageDep, run_id: str) -> Response:
    """The threshold explorer of a train run."""
    run = runs.find_run(page.context.project, "train", run_id)
    if run is None:
        return page.render(request, "missing.html", what=f"train run {run_id}")
    return page.render(request, "threshold.html", run=run.as_dict())


@pages.get("/review")
async def review_page(request: Request, page: PageDep) -> Response:
    """Mark the review queue's images OK or NG."""
    return page.render(request, "review.html")


@pages.get("/train")
async def train_page(request: Request, page: PageDep) -> Response:
    """Start a train run."""
    return page.render(request, "train.html", models=offered_models())


@pages.get("/versions")
async def versions_page(request: Request, page: PageDep) -> Response:
    """The model versions: update the model from the verdicts, make a version active."""
    return page.render(request, "versions.html")
