"""One route per path: the sides each declare their own routes, and a path may appear on both.

Starlette answers a method a route lacks with a 405 naming that route's methods only, so with
``GET /v1/orders`` (reads) and ``POST /v1/orders`` (writes) as separate routes a ``PUT`` would be
told ``Allow: POST``. ``by_path`` joins the routes of a path into one that knows every method.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send


class MethodDispatch:
    """An ASGI app handing each request to the route declared for its method."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.apps: dict[str, ASGIApp] = {}
        for route in routes:
            # A route with GET also answers HEAD (Starlette adds it), so HEAD goes where GET goes.
            for method in route.methods or ():
                if method in self.apps:
                    raise ValueError(f"{method} {route.path} is declared twice")
                self.apps[method] = route.app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The joined route has already answered any other method with a 405.
        await self.apps[scope["method"]](scope, receive, send)


def by_path(routes: Sequence[BaseRoute]) -> list[BaseRoute]:
    """``routes`` with the method-restricted routes of each path joined into one, where the first stood."""
    groups: dict[str, list[Route]] = {}
    for route in routes:
        if isinstance(route, Route) and route.methods:
            groups.setdefault(route.path, []).append(route)
    joined: list[BaseRoute] = []
    for route in routes:
        if not (isinstance(route, Route) and route.methods):
            joined.append(route)
            continue
        group = groups[route.path]
        if len(group) == 1:
            joined.append(route)
        elif route is group[0]:
            dispatch = MethodDispatch(group)
            joined.append(Route(route.path, dispatch, methods=sorted(dispatch.apps), name=route.name))
    return joined


CONVERTOR = re.compile(r"\{(\w+):\w+\}")


@functools.cache  # one entry per route path: bounded by the route table
def template(path: str) -> str:
    """A route path as OpenAPI, /metrics and the logs write it: ``/v1/orders/{id:id}`` is
    ``/v1/orders/{id}``."""
    return CONVERTOR.sub(r"{\1}", path)


def route_template(scope: Scope) -> str | None:
    """The template of the route Starlette's router chose for this request (a 405's too); None
    when no route matched."""
    path: str | None = getattr(scope.get("route"), "path", None)
    return None if path is None else template(path)
