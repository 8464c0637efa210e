"""The page's Monitoring section: the drift of what the HTTP API scored, as a chart over time and a banner.

Two module-level routers, as the page's others: :data:`pages` (``/ui/monitoring``, the token or the login form) and
:data:`api` (``GET /ui/api/drift``, the token): the service's drift watch (:mod:`apps.http.drift`) as JSON.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from apps.http.drift import ServedDrift
from apps.web.state import PageDep, require_login, require_page_login

pages = APIRouter(prefix="/ui", include_in_schema=False, dependencies=[Depends(require_page_login)])
api = APIRouter(prefix="/ui/api", include_in_schema=False, dependencies=[Depends(require_login)])


@pages.get("/monitoring")
async def monitoring_page(request: Request, page: PageDep) -> Response:
    """The drift statistic over time, its limit and a banner while it is crossed."""
    return page.render(request, "monitoring.html")


@api.get("/drift")
async def drift(request: Request) -> dict[str, Any]:
    """The service's drift: availability (or why not), limit, window, each measure and the points of the chart."""
    service = getattr(request.app.state, "service", None)
    served: ServedDrift | None = getattr(getattr(service, "settings", None), "drift", None)
    if served is None:
        return {"available": False, "reason": "this server does not watch drift", "measures": {}, "history": []}
    return served.watch.snapshot()
