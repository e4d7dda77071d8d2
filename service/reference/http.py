"""The generated sections of docs/http.md: routes, their parameters, bodies and statuses, the
Structs on the wire, and the problem types.

The routes come from the OpenAPI document the app serves (itself built from the route table and
the Structs), so the reference says what ``/openapi.json`` says; the problem types come from
``PROBLEMS``. The prose around them in docs/http.md is written by hand.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from service.app import create_app
from service.reference.configuration import table_cell
from shared.config import Settings
from shared.errors import PROBLEMS
from shared.openapi import INSTANT_DATES, PYTHON_WHITESPACE, SEQUENCE_MEDIA_TYPES

REGENERATE = "python -m service.reference"

Document = dict[str, Any]


def served_openapi(settings: Settings) -> Document:
    """The document ``GET /openapi.json`` answers with, for a process serving both sides."""
    app = create_app(settings)
    route = next(r for r in app.routes if isinstance(r, Route) and r.path == "/openapi.json")
    # The endpoint answers from the document create_app built; it reads nothing from the request.
    response = asyncio.run(route.endpoint(Request({"type": "http", "method": "GET"})))
    document: Document = json.loads(response.body)
    return document


def sections() -> dict[str, str]:
    """Each generated section of docs/http.md by its marker name."""
    open_queries = served_openapi(Settings(read_api_open=True))
    # Queries need a token unless READ_API_OPEN opens them: compare the two documents.
    closed_queries = served_openapi(Settings(read_api_tokens=("a-token",)))
    return {
        "routes": route_table(open_queries, closed_queries),
        "operations": operation_details(open_queries),
        "schemas": schema_details(open_queries),
        "problems": problem_table(),
    }


def _operations(document: Document) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in document["paths"].items() for method, op in item.items()]


def route_table(open_queries: Document, closed_queries: Document) -> str:
    closed = {(method, path): "security" in op for method, path, op in _operations(closed_queries)}
    rows = ["| method | path | purpose | token |", "|---|---|---|---|"]
    for method, path, op in _operations(open_queries):
        if "security" in op:
            needs = "`WRITE_API_TOKENS`"
        elif closed[(method, path)]:
            needs = "`READ_API_TOKENS`, unless open"
        else:
            needs = "none"
        link = f"[`{path}`](#{anchor(f'{method} {path}')})"
        rows.append(f"| {method} | {link} | {table_cell(op['summary'])} | {needs} |")
    return "\n".join(rows)


def operation_details(document: Document) -> str:
    schemas = document["components"]["schemas"]
    return "\n\n".join(_operation(method, path, op, schemas) for method, path, op in _operations(document))


def _operation(method: str, path: str, op: dict[str, Any], schemas: Mapping[str, Any]) -> str:
    lines = [f"### {method} {path}", "", op["summary"] + ".", ""]
    for where, title in (("path", "Path"), ("query", "Query"), ("header", "Headers")):
        params = [p for p in op["parameters"] if p["in"] == where]
        if params:
            lines.append(f"- {title}:")
            lines += [f"  - `{p['name']}`: {describe(p['schema'], schemas)}" for p in params]
    if "requestBody" in op:
        ((media, content),) = op["requestBody"]["content"].items()
        lines.append(f"- Body, `{media}`: {_content(media, content['schema'], schemas)}")
    problems: list[str] = []
    for status, response in op["responses"].items():
        if "application/problem+json" in response.get("content", {}):
            problems.append(status)
            continue
        ((media, content),) = response.get("content", {"": {}}).items()
        answer = f", `{media}`: {_content(media, content['schema'], schemas)}" if media else ""
        lines.append(f"- {status} {response['description']}{answer}")
    if problems:
        lines.append(f"- Problems ([problem+json](#problem-types)): {', '.join(sorted(problems))}")
    return "\n".join(lines)


def _content(media: str, schema: dict[str, Any], schemas: Mapping[str, Any]) -> str:
    if media in SEQUENCE_MEDIA_TYPES:  # the document can only say "array of" a line's type
        return f"one {describe(schema['items'], schemas)} a line"
    return describe(schema, schemas)


def schema_details(document: Document) -> str:
    schemas = document["components"]["schemas"]
    blocks = []
    for schema in schemas.values():
        lines = [f"### {schema['title']}", "", "| field | type | required |", "|---|---|---|"]
        required = set(schema.get("required", ()))
        for name, field in schema["properties"].items():
            kind = table_cell(describe(field, schemas))
            lines.append(f"| `{name}` | {kind} | {'yes' if name in required else 'no'} |")
        if schema.get("additionalProperties") is False:
            lines += ["", "Any other field is refused (422)."]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def describe(schema: dict[str, Any], schemas: Mapping[str, Any]) -> str:
    """A JSON Schema in a few words; a kind of schema this does not know stops the generator
    rather than being described wrongly."""
    if "$ref" in schema:
        title = schemas[schema["$ref"].rpartition("/")[2]]["title"]
        return f"[{title}](#{anchor(title)})"
    if "anyOf" in schema:
        return " or ".join(describe(branch, schemas) for branch in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(f"`{value}`" for value in schema["enum"])
    words = _describe_type(schema, schemas)
    if "description" in schema:
        words += f". {schema['description']}"
    return words


def _describe_type(schema: dict[str, Any], schemas: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if kind == "array":
        return f"array of {describe(schema['items'], schemas)}{_range(schema, 'minItems', 'maxItems', ' items')}"
    if kind in ("integer", "number"):
        return f"{kind}{_range(schema, 'minimum', 'maximum', '')}"
    if kind == "string" and schema.get("format") == "date-time":
        accepted = " in the [accepted range](#conventions)" if schema.get("pattern") == INSTANT_DATES else ""
        return f"RFC 3339 date-time{accepted}"
    if kind == "string":
        pattern = f", matching `{python_pattern(schema['pattern'])}`" if "pattern" in schema else ""
        return f"string{_range(schema, 'minLength', 'maxLength', ' characters')}{pattern}"
    if kind in ("boolean", "null"):
        return str(kind)
    raise ValueError(f"no words for the schema {schema}")


def _range(schema: dict[str, Any], low: str, high: str, unit: str) -> str:
    if low in schema and high in schema:
        return f", {schema[low]} to {schema[high]}{unit}"
    if low in schema:
        return f", at least {schema[low]}{unit}"
    if high in schema:
        return f", at most {schema[high]}{unit}"
    return ""


def python_pattern(pattern: str) -> str:
    r"""A pattern as the Structs write it: the document spells Python's ``\s`` out for ECMA-262."""
    return pattern.replace(f"[{PYTHON_WHITESPACE}]", r"\s").replace(PYTHON_WHITESPACE, r"\s")


def problem_table() -> str:
    rows = ["| status | type | title |", "|---|---|---|"]
    kinds = sorted(PROBLEMS.values(), key=lambda kind: kind.status)
    rows += [f"| {kind.status} | `{kind.type}` | {kind.title} |" for kind in kinds]
    return "\n".join(rows)


def anchor(heading: str) -> str:
    """GitHub's id for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# --- the markers in docs/http.md ----------------------------------------------------------------

BEGIN = "<!-- BEGIN GENERATED {name}: " + REGENERATE + " -->\n"
END = "<!-- END GENERATED {name} -->"


def fill(text: str, generated: Mapping[str, str]) -> str:
    """``text`` with each marked section replaced by its generated content."""
    for name, content in generated.items():
        begin, end = BEGIN.format(name=name), END.format(name=name)
        start, stop = text.find(begin), text.find(end)
        if start < 0 or stop < start:
            raise ValueError(f"docs/http.md has no section marked {begin.strip()} ... {end}")
        # Blank lines around the content keep a table or list from running into the markers.
        text = text[: start + len(begin)] + "\n" + content + "\n\n" + text[stop:]
    return text
