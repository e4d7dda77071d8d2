"""OpenAPI 3.1 built from the route table and the msgspec Structs, so the document cannot drift.

Each endpoint is annotated with ``@operation(...)``; ``build_openapi`` walks the routes and asks
msgspec for the JSON Schema of every body, query and response type named there. Where msgspec's
schema says less than the service checks (headers, the cursor, the range of instants, Python's
regular expressions), this module says the rest, so that what the document calls valid the service
accepts. Links, written out below, tell a client (and Schemathesis) what each response leads to.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, TypeVar, get_args, get_type_hints

import msgspec
from starlette.routing import BaseRoute, Route

from shared.dto import EventType, Problem
from shared.paths import template

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


def build_openapi(
    routes: Sequence[BaseRoute], *, title: str, version: str, secured: Collection[BaseRoute] = ()
) -> dict[str, Any]:
    """The document for ``routes``, one Route per method (before ``shared.paths.by_path`` joins
    them); the operations of ``secured`` say they need a bearer token."""
    needs_token = {id(route) for route in secured}
    described = [(route, op) for route in routes if (op := _operation_of(route)) is not None]
    types: list[Any] = [Problem]
    for _, op in described:
        types += [t for t in (op.body, *op.responses.values()) if t is not None]
    (schemas, components) = msgspec.json.schema_components(types, ref_template=REF_TEMPLATE)
    refs = dict(zip(map(_key, types), schemas, strict=True))
    _date_times(types, components)
    paths: dict[str, dict[str, Any]] = {}
    for route, op in described:
        assert isinstance(route, Route)
        for method in sorted((route.methods or set()) - {"HEAD"}):
            path = _openapi_path(route)
            item = {"operationId": operation_id(method.lower(), path), **_path_item(route, op, refs)}
            if id(route) in needs_token:
                item["security"] = [{"bearer": []}]
            paths.setdefault(path, {})[method.lower()] = item
    _add_links(paths)
    _to_ecma_patterns(components)
    _to_ecma_patterns(paths)
    for item in paths.values():
        for op in item.values():
            _bound_instants([op["parameters"], op.get("requestBody", {})], components, set())
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


# Each operation's operationId, the name generated clients give its function: written here, not
# derived from a Python name or a path, so renaming code never renames a client's call, and a grep
# for an id finds its route. (method, path as the document writes it) -> operationId.
OPERATION_IDS: dict[tuple[str, str], str] = {
    ("get", "/healthz"): "checkLiveness",
    ("get", "/readyz"): "checkReadiness",
    ("get", "/openapi.json"): "getOpenApiDocument",
    ("get", "/metrics"): "getMetrics",
    ("get", "/docs"): "getDocsPage",
    ("post", "/v1/customers"): "createCustomer",
    ("post", "/v1/customers/upsert"): "upsertCustomers",
    ("get", "/v1/customers/{id}"): "getCustomer",
    ("post", "/v1/products"): "createProduct",
    ("get", "/v1/products"): "searchProducts",
    ("get", "/v1/products/{id}"): "getProduct",
    ("post", "/v1/products/{id}/restock"): "restockProduct",
    ("post", "/v1/products/{id}/reprice"): "repriceProduct",
    ("post", "/v1/orders"): "placeOrder",
    ("get", "/v1/orders"): "listOrders",
    ("get", "/v1/orders/{id}"): "getOrder",
    ("post", "/v1/orders/{id}/pay"): "payOrder",
    ("post", "/v1/orders/{id}/ship"): "shipOrder",
    ("post", "/v1/orders/{id}/cancel"): "cancelOrder",
    ("post", "/v1/orders/import"): "importOrders",
    ("get", "/v1/stats/revenue/daily"): "getDailyRevenue",
    ("get", "/v1/stats/products/top"): "getTopProducts",
    ("get", "/v1/exports/orders"): "exportOrders",
    ("get", "/v1/events"): "listEvents",
}


def operation_id(method: str, path: str) -> str:
    """The operationId of ``method path``; an operation without one stops the document's build."""
    found = OPERATION_IDS.get((method, path))
    if found is None:
        raise LookupError(f"{method.upper()} {path} has no operationId: add one to shared.openapi.OPERATION_IDS")
    return found


def _operation_of(route: BaseRoute) -> Operation | None:
    if not isinstance(route, Route):
        return None
    op: Operation | None = getattr(route.endpoint, "__openapi__", None)
    return op


def _key(type_: Any) -> str:
    return repr(type_)


def _openapi_path(route: Route) -> str:
    """``/v1/orders/{id:id}`` as OpenAPI writes it, ``/v1/orders/{id}``."""
    return template(route.path)


# Request bodies and responses of these media types are a sequence of the named type, one JSON
# value a line; OpenAPI 3.1 has no item schema, so the document says "array of".
SEQUENCE_MEDIA_TYPES = frozenset({"application/x-ndjson", "application/jsonl"})


def _path_item(route: Route, op: Operation, refs: dict[str, Any]) -> dict[str, Any]:
    item: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "parameters": _parameters(route, op)}
    if op.body is not None:
        body = refs[_key(op.body)]
        if op.body_media_type in SEQUENCE_MEDIA_TYPES:
            body = {"type": "array", "items": body, "minItems": 1}  # an empty import is refused (422)
        item["requestBody"] = {"required": True, "content": {op.body_media_type: {"schema": body}}}
    responses: dict[str, Any] = {}
    for status, type_ in op.responses.items():
        response: dict[str, Any] = {"description": _describe(status)}
        if type_ is not None:
            media = "application/problem+json" if status >= 400 else op.response_media_type
            schema = refs[_key(type_)]
            if media in SEQUENCE_MEDIA_TYPES:
                schema = {"type": "array", "items": schema}
            response["content"] = {media: {"schema": schema}}
        responses[str(status)] = response
    item["responses"] = responses
    return item


# Path ids are bigint keys, and the path convertor takes only their canonical decimal form.
PATH_ID: dict[str, Any] = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}

# reads.events: a comma-separated list of known event types.
_EVENT_TYPE = "(" + "|".join(re.escape(type_) for type_ in get_args(EventType)) + ")"
EVENT_ID = {
    "type": "string",
    "pattern": "^[A-Za-z0-9_-]*$",
    "description": "Opaque: an event's id (or a page's next_cursor); the feed resumes after it. It is sealed, so "
    "any other value is a 400, and one older than the events kept is a 410. Empty names no event: the feed "
    "starts where it would without it.",
}

# What the service accepts in these headers; any other header is described as a plain string.
HEADER_SCHEMAS: dict[str, dict[str, Any]] = {
    # writes.idempotency.KEY: 1..255 printable ASCII. HTTP strips spaces around a field value, so a
    # key can neither start nor end with one.
    "Idempotency-Key": {
        "type": "string",
        "minLength": 1,
        "maxLength": 255,
        "pattern": r"^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$",
    },
    # shared.http.if_match_versions: "*" or strong tags of a version (an int4). Tags that name no
    # version (weak, malformed, another version) are a 412, like a stale one.
    "If-Match": {
        "type": "string",
        "pattern": r'^(\*|"[0-9]{1,10}"([ \t]*,[ \t]*"[0-9]{1,10}")*)$',
    },
    # shared.consistency.decode_token: what a command's response carried; any other value is a 400.
    "Consistency-Token": {
        "type": "string",
        "pattern": r"^1\.[0-9a-f]{16}$",
        "description": "Opaque: the Consistency-Token of a command's response. The answer is then never "
        "older than that command.",
    },
    # reads.events: what an event stream's `id:` lines carry; a browser sends the last one on reconnecting.
    "Last-Event-ID": EVENT_ID,
}

# Query parameters whose Struct type says less than the service checks.
QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "after": EVENT_ID,
    "types": {
        "type": "string",
        "pattern": f"^{_EVENT_TYPE}(,{_EVENT_TYPE})*$",
        "description": "Only events of these types, comma-separated.",
    },
    "cursor": {
        "type": "string",
        "pattern": "^[A-Za-z0-9_-]+$",
        "description": "Opaque: the next_cursor of the previous page, with the same filters. "
        "A cursor is sealed, so any other value is a 400.",
    },
}


def _parameters(route: Route, op: Operation) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": dict(PATH_ID)} for name in route.param_convertors
    ]
    if op.query is not None:
        info = msgspec.inspect.type_info(op.query)
        assert isinstance(info, msgspec.inspect.StructType)
        # f.type is msgspec's inspection of the field; the schema is made from its annotation.
        annotations = get_type_hints(op.query, include_extras=True)
        for f in info.fields:
            schema = dict(QUERY_SCHEMAS.get(f.encode_name) or _without_null(msgspec.json.schema(annotations[f.name])))
            params.append({"name": f.encode_name, "in": "query", "required": f.required, "schema": schema})
    params += [
        {"name": name, "in": "header", "required": False, "schema": dict(HEADER_SCHEMAS.get(name, {"type": "string"}))}
        for name in op.headers
    ]
    return params


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``T | None`` as ``T``: a query parameter cannot be null, only absent (which is how to say "none")."""
    if "anyOf" not in schema:
        return schema
    branches = [branch for branch in schema["anyOf"] if branch != {"type": "null"}]
    return branches[0] if len(branches) == 1 else {**schema, "anyOf": branches}


def _describe(status: int) -> str:
    return HTTPStatus(status).phrase


# --- links: what a response lets a client do next (and Schemathesis's stateful phase follow) ------

BODY_ID = "$response.body#/id"
ETAG = "$response.header.ETag"
TRANSITION = {"path.id": BODY_ID, "header.If-Match": ETAG}
GET_CUSTOMER = ("GetCustomer", "get", "/v1/customers/{id}", {"parameters": {"path.id": BODY_ID}})
GET_PRODUCT = ("GetProduct", "get", "/v1/products/{id}", {"parameters": {"path.id": BODY_ID}})
GET_ORDER = ("GetOrder", "get", "/v1/orders/{id}", {"parameters": {"path.id": BODY_ID}})
RESTOCK = ("Restock", "post", "/v1/products/{id}/restock", {"parameters": {"path.id": BODY_ID}})
REPRICE = ("Reprice", "post", "/v1/products/{id}/reprice", {"parameters": {"path.id": BODY_ID}})
PAY = ("Pay", "post", "/v1/orders/{id}/pay", {"parameters": TRANSITION})
SHIP = ("Ship", "post", "/v1/orders/{id}/ship", {"parameters": TRANSITION})
CANCEL = ("Cancel", "post", "/v1/orders/{id}/cancel", {"parameters": TRANSITION})

# (method, path, status) -> the links of that response: (name, target method, target path, link fields).
LINKS: dict[tuple[str, str, str], tuple[tuple[str, str, str, dict[str, Any]], ...]] = {
    ("post", "/v1/customers", "201"): (
        GET_CUSTOMER,
        ("ListTheirOrders", "get", "/v1/orders", {"parameters": {"query.customer_id": BODY_ID}}),
        ("ExportTheirOrders", "get", "/v1/exports/orders", {"parameters": {"query.customer_id": BODY_ID}}),
        ("PlaceTheirOrder", "post", "/v1/orders", {"requestBody": {"customer_id": BODY_ID}}),
    ),
    ("post", "/v1/products", "201"): (
        GET_PRODUCT,
        RESTOCK,
        REPRICE,
        ("OrderIt", "post", "/v1/orders", {"requestBody": {"items": [{"product_id": BODY_ID, "quantity": 1}]}}),
    ),
    ("get", "/v1/products/{id}", "200"): (
        RESTOCK,
        REPRICE,
        (
            "GetIfChanged",
            "get",
            "/v1/products/{id}",
            {"parameters": {"path.id": BODY_ID, "header.If-None-Match": ETAG}},
        ),
    ),
    ("post", "/v1/products/{id}/restock", "200"): (GET_PRODUCT, REPRICE),
    ("post", "/v1/products/{id}/reprice", "200"): (GET_PRODUCT, RESTOCK),
    ("post", "/v1/orders", "201"): (GET_ORDER, PAY, SHIP, CANCEL),
    ("get", "/v1/orders/{id}", "200"): (PAY, SHIP, CANCEL),
    ("post", "/v1/orders/{id}/pay", "200"): (GET_ORDER, SHIP, CANCEL),
    ("post", "/v1/orders/{id}/ship", "200"): (GET_ORDER, CANCEL),
    ("post", "/v1/orders/{id}/cancel", "200"): (GET_ORDER, PAY),
}


def _add_links(paths: dict[str, dict[str, Any]]) -> None:
    """Attach ``LINKS`` to the responses they start from, when both ends are served (a process
    serving one side has no link to the other)."""
    for (method, path, status), links in LINKS.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for name, target_method, target_path, fields in links:
            if target_method in paths.get(target_path, {}):
                pointer = "#/paths/" + target_path.replace("~", "~0").replace("/", "~1") + "/" + target_method
                response.setdefault("links", {})[name] = {"operationRef": pointer, **fields}


def _date_times(types: list[Any], components: dict[str, Any]) -> None:
    """msgspec describes a ``datetime`` without ``tz=True`` (the views') as a plain string; every
    timestamp the service writes is an RFC 3339 instant, so the document says date-time."""
    seen: set[type] = set()
    pending: list[msgspec.inspect.Type] = list(msgspec.inspect.multi_type_info(types))
    while pending:
        kind = pending.pop()
        if isinstance(kind, msgspec.inspect.StructType):
            if kind.cls in seen:
                continue
            seen.add(kind.cls)
            properties = components.get(kind.cls.__name__, {}).get("properties", {})
            for f in kind.fields:
                if isinstance(f.type, msgspec.inspect.DateTimeType) and f.encode_name in properties:
                    properties[f.encode_name]["format"] = "date-time"
                pending.append(f.type)
        else:  # a list, union, dict, Annotated metadata ...: look inside
            for value in (getattr(kind, name) for name in kind.__struct_fields__):
                values = value if isinstance(value, tuple) else (value,)
                pending += [child for child in values if isinstance(child, msgspec.inspect.Type)]


# --- instants --------------------------------------------------------------------------------

# shared.dto.require_storable: an instant is accepted from 0001-01-02T00:00:00Z to
# 9999-12-30T23:59:59.999999Z. JSON Schema has no bounds for a date-time, so the pattern bounds its
# date: 0001-01-03 to 9999-12-29 whatever the offset (which moves the UTC date by a day at most) lies
# inside. The two days at each end that depend on the offset are left out, never wrongly let in.
INSTANT_DATES = (
    "^(0001-(01-(0[3-9]|[12][0-9]|3[01])|(0[2-9]|1[0-2])-)"
    "|(000[2-9]|00[1-9][0-9]|0[1-9][0-9]{2}|[1-8][0-9]{3}|9[0-8][0-9]{2}|99[0-8][0-9]|999[0-8])-"
    "|9999-((0[1-9]|1[01])-|12-([01][0-9]|2[0-9])))"
)


def _bound_instants(node: Any, components: dict[str, Any], seen: set[str]) -> None:
    """Give every date-time a request can carry under ``node`` (following its $refs) the dates of
    the instants the service accepts. Responses keep plain date-times: a row written by hand can
    hold an instant outside the range, and reads show it (as 0001-01-01 or 9999-12-31)."""
    if isinstance(node, dict):
        if node.get("format") == "date-time" and "pattern" not in node:
            node["pattern"] = INSTANT_DATES
        name = node.get("$ref", "").rpartition("/")[2]
        if name and name not in seen:
            seen.add(name)
            _bound_instants(components[name], components, seen)
        for value in node.values():
            _bound_instants(value, components, seen)
    elif isinstance(node, list):
        for value in node:
            _bound_instants(value, components, seen)


# --- patterns: msgspec checks them with Python's `re`, OpenAPI readers with ECMA-262 ---------------

# Python's \s in a str pattern; ECMA-262's differs (no \x1c-\x1f or \x85, but \ufeff), so a name of
# only "\x1c" would be valid by the document and refused by the service.
PYTHON_WHITESPACE = r"\t\n\x0b\x0c\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
# Classes that mean something else in the two dialects and have no translation here yet.
UNTRANSLATED = frozenset("SdDwWbBAZ")


def _to_ecma_patterns(node: Any) -> None:
    """Rewrite every ``pattern`` under ``node`` in place so that ECMA-262 reads it as Python does."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                node[key] = ecma_pattern(value)
            else:
                _to_ecma_patterns(value)
    elif isinstance(node, list):
        for value in node:
            _to_ecma_patterns(value)


def ecma_pattern(pattern: str) -> str:
    r"""``pattern`` (Python ``re``) with ``\s`` spelled out, inside a class or standing alone.

    ``$`` differs too (Python's also matches before a final newline), but the Structs' patterns
    either end in ``(?!\n)$`` or admit newlines anyway, so it is left alone."""
    out: list[str] = []
    class_opened_at: int | None = None  # index in out of the open class's "[", if any
    chars = iter(pattern)
    for char in chars:
        if char == "\\":
            escaped = next(chars)
            if escaped in UNTRANSLATED:
                raise ValueError(f"pattern {pattern!r}: \\{escaped} has no ECMA-262 translation here")
            in_class = class_opened_at is not None
            out.append(
                (PYTHON_WHITESPACE if in_class else f"[{PYTHON_WHITESPACE}]") if escaped == "s" else char + escaped
            )
        elif char == "[" and class_opened_at is None:
            class_opened_at = len(out)
            out.append(char)
        elif char == "]" and class_opened_at is not None:
            if "".join(out[class_opened_at:]) in ("[", "[^"):
                out.append(r"\]")  # first in a class, Python reads a member; ECMA-262 the class's end
            else:
                class_opened_at = None
                out.append(char)
        else:
            out.append(char)
    return "".join(out)
