"""The quality engineer's web page, on the scoring service (same process, same resident detector).

Pages (server-rendered, one script and one style sheet served by the app: no CDN, no build step):
``/ui/inspect`` (score uploads or a server folder), ``/ui/runs`` and ``/ui/runs/{pipeline}/{id}``,
``/ui/threshold/{id}`` (the validation sweep; "use this threshold" writes a plan copy), ``/ui/review`` (mark the
review queue's images OK or NG: ``review/feedback.csv``), ``/ui/versions`` (the model versions: update the
model from the verdicts, make a version active), ``/ui/train``, ``/ui/monitoring`` (the drift of what the API
scored, over time).

Safe by default: where the service has a token, every page and ``/ui/api`` route needs it (``Authorization:
Bearer`` or the cookie ``/ui/login`` sets, HttpOnly and SameSite=Strict). Every POST needs the page's
per-process CSRF value in ``X-VAD-CSRF`` (a header no other site's page can send here) and, when the browser
sends one, an ``Origin`` of this server. Pages carry a Content-Security-Policy without inline script, and
show file names and CSV text as text only. Files are served by run and id or picture key, never by a path
the request names outside the run folder or the data folder.

The page is its own routers (:mod:`apps.web.pages`: the HTML pages, :mod:`apps.web.ui_api`: their JSON routes),
module-level, their state in ``app.state.page`` (:class:`apps.web.state.Page`) reached through a dependency;
:func:`add_ui` only puts that state and the routers on the scoring service's app.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse

from apps.http.batcher import Batcher
from apps.web import monitoring, pages, ui_api
from apps.web.state import SECURITY_HEADERS, LoginNeededError, Page, UiContext, UiError
from apps.web.training import Trainer

__all__ = ["UiContext", "UiError", "add_ui"]


def add_ui(
    app: FastAPI, batcher: Batcher, context: UiContext, token: str | None, max_images: int, version: str
) -> None:
    """Add the page's routers, its state and its error answers to the scoring service.

    Args:
        app: The service's FastAPI app.
        batcher: The service's batcher (the resident detector).
        context: Project, plan, model and data folder.
        token: The service's token (None: no token needed).
        max_images: Most images scored per request.
        version: The solution version (the summary's ``version``).
    """
    trainer = Trainer(context.plan_path, context.data_root)
    app.state.page = Page(context, batcher, token, max_images, version, trainer)
    app.add_exception_handler(UiError, _ui_error)
    app.add_exception_handler(LoginNeededError, _login)
    app.router.on_shutdown.append(trainer.close)
    for router in (pages.public, pages.pages, ui_api.router, monitoring.pages, monitoring.api):
        app.include_router(router)


async def _ui_error(request: Request, exc: Exception) -> JSONResponse:
    """A :class:`UiError` as its status and ``{"error": ...}``, with the page's security headers."""
    del request
    status = exc.status if isinstance(exc, UiError) else 500
    return JSONResponse({"error": str(exc)}, status, headers=SECURITY_HEADERS)


async def _login(request: Request, exc: Exception) -> RedirectResponse:
    """A page asked for without the token: to the login form."""
    del request, exc
    return RedirectResponse("/ui/login", 303)
