"""Templates, the page route class and the split-over-time chart's geometry.

`PageRoute` is the route class of every page: it turns the errors a handler or its
authorization raises into HTML pages (a sign-in redirect, 403, 404 exactly as for an absent
tenant, …) with the status the API would answer, and adds the pages' security headers: a CSP
that allows only this origin's script and styles (no inline script), no framing, no caching.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from urllib.parse import quote

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from registry.errors import FtdeployError
from registry.views.canary import FleetCanary
from registry.views.fleet import FleetRow
from registry.views.splits import Share
from registry.views.splits import text as split_text
from registry.views.tenant import Interval
from worker.http.pages.sessions import SignInNeeded
from worker.http.problems import Forbidden, Unauthorized, status_of

log = logging.getLogger("ftdeploy.http")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
PALETTE = 6  # version colours (CSS classes v0..v5); every share also has its text


def utc(moment: datetime | None) -> str:
    """`2026-01-31 12:00:00 UTC` (by isoformat: strftime takes twice as long, and a chart shows
    a thousand of these)."""
    if moment is None:
        return ""
    return moment.astimezone(UTC).isoformat(" ", "seconds")[:19] + " UTC"


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    value = float(value)
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def colour(version: int) -> str:
    return f"v{version % PALETTE}"


def bar(split: Sequence[Share], label: str | None = None) -> Markup:
    """A split as a bar (inline SVG: geometry in attributes, no style, so CSP allows it) with
    its text beside it, for readers without colour and for screen readers."""
    return _bar(tuple(split), label)


@lru_cache(maxsize=4096)  # a fleet has few distinct splits
def _bar(split: tuple[Share, ...], label: str | None) -> Markup:
    words = split_text(list(split))
    rects, x = [], 0
    for share in split:
        rects.append(
            f'<rect x="{x}" y="0" width="{share.percent}" height="10" '
            f'class="{colour(share.version)} {share.role}"><title>v{share.version} '
            f"{share.percent}%</title></rect>"
        )
        x += share.percent
    if not split:
        rects.append('<rect x="0" y="0" width="100" height="10" class="none"></rect>')
    return Markup(
        '<span class="split"><svg class="bar" viewBox="0 0 100 10" preserveAspectRatio="none" '
        f'role="img" aria-label="{escape(label or words)}">{"".join(rects)}</svg>'
        f'<span class="split-text">{escape(words)}</span></span>'
    )


def canary_cell(canary: FleetCanary | None) -> Markup:
    """The fleet's canary column for one tenant: what it shows depends on a few fields that
    most canaries of a fleet share, so each distinct cell is built once (a fleet page has
    thousands of rows, and escaping each value of each row was a fifth of its render time)."""
    if canary is None:
        return Markup('<span class="meta">none</span>')
    steps = len(canary.steps) if canary.steps else 0
    return _canary_cell(
        canary.version, canary.traffic_percent, canary.step_number, steps, canary.action,
        canary.state,
    )  # fmt: skip


@lru_cache(maxsize=4096)
def _canary_cell(
    version: int, percent: int, step: int | None, steps: int, action: str, state: str
) -> Markup:
    where = f"v{version} at {percent}%" + (f", step {step} of {steps}" if step else "")
    return Markup(
        f'{escape(where)} <span class="state state-{escape(action)}">{escape(state)}</span>'
    )


def fleet_rows(rows: Sequence[FleetRow]) -> Markup:
    """The fleet table's rows, as one piece of markup. Built here rather than in the template: a
    fleet page has thousands of rows, and the template's attribute lookups, escapes and chunks
    were most of its render time. The parts are joined once as plain text (a Markup formatted
    into a string is copied; each part is already escaped). What rows share (the strategy's
    words, the reasons, the bar, the canary's cell) is built once per distinct value; only the
    slug is escaped per row."""
    parts: list[str] = []
    add = parts.extend
    for row in rows:
        slug = _escaped(row.tenant)
        reasons = tuple(row.attention)
        add(
            (
                '<tr class="attention">' if reasons else "<tr>",
                '<th scope="row" data-label="Tenant"><a href="/tenants/',
                slug,
                '">',
                slug,
                "</a>",
                _meta(row.strategy, row.auto_promote),
                '</th><td data-label="Live split">',
                bar(row.split),
                '</td><td data-label="Canary">',
                canary_cell(row.canary),
                '</td><td data-label="Needs attention">',
                _reasons(reasons),
                "</td></tr>\n",
            )
        )
    return Markup("".join(parts))


_UNSAFE = re.compile(r"[&<>\"']")


def _escaped(text: str) -> str:
    """`escape(text)`, without the cost of a Markup for text with nothing to escape (a slug)."""
    return str(escape(text)) if _UNSAFE.search(text) else text


@lru_cache(maxsize=64)
def _meta(strategy: str, auto_promote: bool) -> Markup:
    words = strategy.replace("_", "-") + (", auto-promote" if auto_promote else "")
    return Markup(f'<span class="meta">{escape(words)}</span>')


@lru_cache(maxsize=4096)
def _reasons(reasons: tuple[str, ...]) -> Markup:
    if not reasons:
        return Markup('<span class="meta">nothing</span>')
    items = "".join(f"<li>{escape(reason)}</li>" for reason in reasons)
    return Markup(f'<ul class="reasons">{items}</ul>')


def when(moment: datetime | None) -> Markup:
    """A `<time>` in UTC; the page script shows it in the viewer's zone (UTC stays on hover)."""
    if moment is None:
        return Markup("-")
    shown = utc(moment)
    return Markup(f'<time datetime="{iso(moment)}" title="{shown}">{shown}</time>')


# -- the split over time ---------------------------------------------------------------------

CHART_WIDTH, CHART_HEIGHT = 1000.0, 160.0


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    version: int
    percent: int


@dataclass(frozen=True)
class Column:
    """One interval of the chart: its bars and the sentence its hover title says."""

    x: float
    width: float
    bars: list[Bar]
    title: str
    start: datetime
    end: datetime


def chart(intervals: list[Interval]) -> list[Column]:
    """Stacked columns, one per interval, x by time (a sliver at least, so none vanish)."""
    if not intervals:
        return []
    first, last = intervals[0].start, intervals[-1].end
    span = max((last - first).total_seconds(), 1e-6)
    columns = []
    shown: dict[datetime, str] = {}  # each interval ends where the next begins: format once

    def at(moment: datetime) -> str:
        text = shown.get(moment)
        if text is None:
            text = shown[moment] = utc(moment)
        return text

    for interval in intervals:
        x = (interval.start - first).total_seconds() / span * CHART_WIDTH
        width = max((interval.end - interval.start).total_seconds() / span * CHART_WIDTH, 0.5)
        bars, y = [], 0.0
        for share in interval.split:
            height = share.percent / 100 * CHART_HEIGHT
            bars.append(Bar(x, y, width, height, share.version, share.percent))
            y += height
        title = f"{at(interval.start)} to {at(interval.end)}: {split_text(interval.split)}"
        columns.append(Column(x, width, bars, title, interval.start, interval.end))
    return columns


def chart_columns(columns: Sequence[Column], height: float) -> Markup:
    """The chart's columns as one piece of markup, each with its hover title and its bars.
    Built here rather than in the template for the reason of `fleet_rows`: a chart has hundreds
    of columns, and formatting each number through the template's filters was most of the
    tenant page's render time."""
    return Markup("\n".join([_column(column, height) for column in columns]))


def _column(column: Column, height: float) -> str:
    bars = "".join(
        [
            f'<rect class="{colour(b.version)}" x="{b.x:.2f}" y="{b.y:.2f}" '
            f'width="{b.width:.2f}" height="{b.height:.2f}"></rect>'
            for b in column.bars
        ]
    )
    return (
        f'    <g class="column" data-start="{iso(column.start)}" data-end="{iso(column.end)}">'
        f"<title>{escape(column.title)}</title>\n"
        f'      <rect class="hit" x="{column.x:.2f}" y="0" width="{column.width:.2f}" '
        f'height="{height}"></rect>\n{bars}    </g>'
    )


def legend(intervals: list[Interval]) -> list[int]:
    return sorted({share.version for interval in intervals for share in interval.split})


environment = Environment(
    loader=PackageLoader("worker.http.pages", "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
environment.filters.update(
    utc=utc,
    iso=iso,
    seconds=seconds,
    ratio=ratio,
    colour=colour,
    split_text=split_text,
    bar=bar,
    canary_cell=canary_cell,
    fleet_rows=fleet_rows,
    chart_columns=chart_columns,
    when=when,
)


def page(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = environment.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status)


def error_page(request: Request, status: int, detail: str) -> HTMLResponse:
    titles = {401: "Not signed in", 403: "Not allowed", 404: "Not found", 422: "Invalid input"}
    title = titles.get(status, "Refused" if status < 500 else "Server error")
    return page("error.html", status, title=title, detail=detail, viewer=None, csrf=None)


def _sign_in(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if request.method != "GET" or request.headers.get("x-requested-with") == "fetch":
        return error_page(request, 401, "Your session ended: sign in again.")
    return RedirectResponse(f"/sign-in?next={quote(target, safe='/')}", status_code=303)


def as_page(request: Request, error: Exception) -> Response:
    """The HTML page for an error raised by a page handler or its authorization."""
    if isinstance(error, SignInNeeded):
        return _sign_in(request)
    if isinstance(error, Unauthorized):
        return error_page(request, 401, error.detail)
    if isinstance(error, Forbidden):
        return error_page(request, 403, error.detail)
    if isinstance(error, FtdeployError):
        return error_page(request, status_of(error), str(error))
    if isinstance(error, RequestValidationError):
        return error_page(request, 422, "the request's parameters are not valid")
    if isinstance(error, HTTPException):
        return error_page(request, error.status_code, str(error.detail))
    # The traceback goes to the server log only, never into the page.
    log.error("page.internal_error", exc_info=error, extra={"ftdeploy_fields": {}})
    return error_page(request, 500, "internal error (the server log has the details)")


def secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


class PageRoute(APIRoute):
    """An HTML page: errors become pages, every response gets the security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def page_handler(request: Request) -> Response:
            try:
                response = await handler(request)
            except Exception as error:  # every error: a page, never a traceback
                response = as_page(request, error)
            return secure(response)

        return page_handler
