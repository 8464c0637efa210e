"""What the page's routes work with (``app.state.page``), and the dependencies that reach it and guard them.

The routers of :mod:`apps.web.pages` and :mod:`apps.web.ui_api` are module-level; each route reaches the
page's state through :func:`page_state` (a FastAPI dependency), never through a closure. The guards are
dependencies too: :func:`require_login` is the JSON router's own dependency and :func:`require_page_login` the
pages router's, so no route added to either can go without the token; every POST also depends on
:func:`require_csrf`.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import Response
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from alo.runner import train_id_of
from apps.http.auth import bearer, token_matches
from apps.http.batcher import Batcher
from apps.web import runs
from apps.web.inspect import PictureStore
from apps.web.training import Trainer

HERE = Path(__file__).resolve().parent
COOKIE = "vad_token"
CSRF_HEADER = "x-vad-csrf"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
}


@dataclass
class UiContext:
    """What the page works on.

    Attributes:
        project: The project folder (the plan's folder: artifacts and history).
        plan_path: The user's plan (copied, never edited).
        models: The served model's ``models`` folder.
        data_root: Folders the page may read images and train data from (None: uploads only, no training).
    """

    project: Path
    plan_path: Path
    models: Path
    data_root: Path | None
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))


class UiError(Exception):
    """A request the page answers with one line (status and message)."""

    def __init__(self, status: int, message: str) -> None:
        """Keep the status."""
        super().__init__(message)
        self.status = status


class LoginNeededError(Exception):
    """A page asked for without the token: answered with a redirect to ``/ui/login``."""


def load_templates() -> Jinja2Templates:
    """The page's templates (``apps/web/templates``), autoescaped."""
    loader = FileSystemLoader(HERE / "templates")
    return Jinja2Templates(env=Environment(loader=loader, autoescape=select_autoescape(["html"]), auto_reload=False))


@dataclass
class Page:
    """The page's state: its context, the service's batcher and limits, and what it keeps between requests.

    Attributes:
        context: Project, plan, model and data folder.
        batcher: The service's batcher (the resident detector).
        token: The service's token (None: no token needed).
        max_images: Most images scored per request.
        version: The solution version (the summary's ``version``).
        trainer: The train runs started from the page.
        pictures: The pictures of scored images, kept for the page to fetch.
        templates: The HTML templates.
    """

    context: UiContext
    batcher: Batcher
    token: str | None
    max_images: int
    version: str
    trainer: Trainer
    pictures: PictureStore = field(default_factory=PictureStore)
    templates: Jinja2Templates = field(default_factory=load_templates)

    def authorized(self, request: Request) -> bool:
        """Whether the request carries the token (bearer header or the login cookie), where one is needed."""
        given = bearer(request) or request.cookies.get(COOKIE, "")
        return self.token is None or token_matches(given, self.token)

    def current_train(self) -> runs.RunInfo | None:
        """The train run of the served model, or None when it is not in the project."""
        train_id = train_id_of(self.context.models)
        return None if train_id is None else runs.find_run(self.context.project, "train", train_id)

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> Response:
        """A template as an HTML page, with the CSRF value and the security headers.

        Args:
            request: The request.
            name: The template's file name.
            status: The HTTP status.
            **values: The template's values.

        Returns:
            The page.
        """
        values = {"csrf": self.context.csrf, "page": name.removesuffix(".html"), **values}
        return self.templates.TemplateResponse(request, name, values, status_code=status, headers=SECURITY_HEADERS)


def page_state(request: Request) -> Page:
    """The app's :class:`Page` (a dependency of every page route)."""
    return request.app.state.page


PageDep = Annotated[Page, Depends(page_state)]


def require_login(request: Request, page: PageDep) -> None:
    """Refuse a JSON request without the token (401)."""
    if not page.authorized(request):
        raise UiError(401, "missing or wrong token: log in at /ui/login")


def require_page_login(request: Request, page: PageDep) -> None:
    """Send a page request without the token to ``/ui/login``."""
    if not page.authorized(request):
        raise LoginNeededError


def same_origin(request: Request) -> bool:
    """Whether a request comes from this server's own page (its ``Origin`` and ``Sec-Fetch-Site``)."""
    origin = request.headers.get("origin")
    if origin is not None and origin != f"{request.url.scheme}://{request.headers.get('host', '')}":
        return False
    return request.headers.get("sec-fetch-site", "same-origin") in ("same-origin", "none")


def require_csrf(request: Request, page: PageDep) -> None:
    """Refuse a POST without the page's CSRF value or from another origin (403)."""
    given = request.headers.get(CSRF_HEADER, "")
    if not (token_matches(given, page.context.csrf) and same_origin(request)):
        raise UiError(403, "cross-site or stale request refused: reload the page and try again")


def inside(root: Path | None, relative: str) -> Path:
    """A folder of the data root the request names, refused (403) unless it stays inside it."""
    if root is None:
        raise UiError(403, "this server has no data folder: upload images instead (start it with --data-root)")
    base = root.resolve()
    try:
        path = (base / relative).resolve()
    except (OSError, ValueError):
        raise UiError(404, "no such folder in the data folder") from None
    if not path.is_relative_to(base):
        raise UiError(403, "that folder is outside the server's data folder")
    return path
