"""OpenAPI 3.1 built from the route table and the msgspec Structs, so the document cannot drift.

Each endpoint is annotated with ``@operation(...)``; ``build_openapi`` walks the routes and asks
msgspec for the JSON Schema of every body, query and response type named there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar, get_type_hints

import msgspec
from starlette.routing import BaseRoute, Route

from shared.dto import Problem

F = TypeVar("F", bound=Callable[..., Any])

REF_TEMPLATE = "#/components/schemas/{name}"


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    responses: dict[int, Any]
    body: Any = None
    body_media_type: str = "application/json"
    query: Any = None
    response_media_type: str = "application/json"
    headers: tuple[str, ...] = field(default=())


def operation(
    summary: str,
    *,
    tag: str,
    responses: dict[int, Any],
    body: Any = None,
    body_media_type: str = "application/json",
    query: Any = None,
    response_media_type: str = "application/json",
    headers: tuple[str, ...] = (),
) -> Callable[[F], F]:
    """Describe an endpoint for ``/openapi.json``; ``responses`` maps status to a type or None."""
    described = Operation(summary, tag, responses, body, body_media_type, query, response_media_type, headers)

    def attach(endpoint: F) -> F:
        endpoint.__openapi__ = described  # type: ignore[attr-defined]
        return endpoint

    return attach


def build_openapi(routes: Sequence[BaseRoute], title: str, version: str) -> dict[str, Any]:
    described = [(route, op) for route in routes if (op := _operation_of(route)) is not None]
    types: list[Any] = [Problem]
    for _, op in described:
        types += [t for t in (op.body, *op.responses.values()) if t is not None]
    (schemas, components) = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    refs = dict(zip(map(_key, types), schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for route, op in described:
        assert isinstance(route, Route)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            paths.setdefault(_openapi_path(route), {})[method.lower()] = _path_item(route, op, refs)
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def _operation_of(route: BaseRoute) -> Operation | None:
    if not isinstance(route, Route):
        return None
    op: Operation | None = getattr(route.endpoint, "__openapi__", None)
    return op


def _key(type_: Any) -> str:
    return repr(type_)


def _openapi_path(route: Route) -> str:
    path = route.path
    for name in route.param_convertors:
        path = path.replace(f"{{{name}:int}}", f"{{{name}}}")
    return path


def _path_item(route: Route, op: Operation, refs: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "parameters": _parameters(route, op)}
    if op.body is not None:
        item["requestBody"] = {
            "required": True,
            "content": {op.body_media_type: {"schema": refs[_key(op.body)]}},
        }
    responses: dict[str, Any] = {}
    for status, type_ in op.responses.items():
        response: dict[str, Any] = {"description": _describe(status)}
        if type_ is not None:
            media = "application/problem+json" if status >= 400 else op.response_media_type
            response["content"] = {media: {"schema": refs[_key(type_)]}}
        responses[str(status)] = response
    item["responses"] = responses
    return item


def _parameters(route: Route, op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "integer", "minimum": 1}}
        for name in route.param_convertors
    ]
    if op.query is not None:
        info = msgspec.inspect.type_info(op.query)
        assert isinstance(info, msgspec.inspect.StructType)
        # f.type is msgspec's inspection of the field; the schema is made from its annotation.
        annotations = get_type_hints(op.query, include_extras=True)
        for f in info.fields:
            schema = msgspec.json.schema(annotations[f.name])
            params.append({"name": f.encode_name, "in": "query", "required": f.required, "schema": schema})
    params += [{"name": name, "in": "header", "required": False, "schema": {"type": "string"}} for name in op.headers]
    return params


def _describe(status: int) -> str:
    return HTTPStatus(status).phrase
