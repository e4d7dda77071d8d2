"""Every configuration variable, read from ``Settings`` itself: type, default, bounds and meaning.

The meaning is the field's ``Meta(description=...)``, so the table and the code are one text. A
field without one stops the generator: an undocumented knob is a bug, not a blank cell.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import msgspec.inspect as mi

from shared.config import Settings

MASK = "***"


@dataclass(frozen=True)
class Variable:
    name: str  # the environment variable
    attribute: str  # the Settings field
    type: str
    default: str
    bounds: str
    meaning: str
    secret: bool


def variables() -> list[Variable]:
    info = mi.type_info(Settings)
    assert isinstance(info, mi.StructType)
    return [_variable(f) for f in info.fields]


def _variable(f: mi.Field) -> Variable:
    kind = f.type
    description = (kind.extra_json_schema or {}).get("description") if isinstance(kind, mi.Metadata) else None
    if not isinstance(kind, mi.Metadata) or not description:
        raise LookupError(f"Settings.{f.name} has no Meta(description=...): say what {f.encode_name} means")
    return Variable(
        name=f.encode_name,
        attribute=f.name,
        type=_type_name(kind.type),
        default=env_form(f.default),
        bounds=_bounds(kind.type),
        meaning=description,
        secret=bool((kind.extra or {}).get("secret")),
    )


def _type_name(kind: mi.Type) -> str:
    if isinstance(kind, mi.UnionType):  # T | None: None is "unset", shown as the default
        return " or ".join(_type_name(member) for member in kind.types if not isinstance(member, mi.NoneType))
    if isinstance(kind, mi.LiteralType):
        return " | ".join(str(value) for value in kind.values)
    if isinstance(kind, mi.VarTupleType):
        return f"comma-separated {_type_name(kind.item_type)}s"
    names: dict[type[mi.Type], str] = {
        mi.IntType: "integer",
        mi.FloatType: "number",
        mi.BoolType: "boolean",
        mi.StrType: "string",
    }
    return names[type(kind)]


def _bounds(kind: mi.Type) -> str:
    if not isinstance(kind, mi.IntType | mi.FloatType):
        return ""
    if kind.ge is not None and kind.le is not None:
        return f"{kind.ge} to {kind.le}"
    lower = f">= {kind.ge}" if kind.ge is not None else f"> {kind.gt}" if kind.gt is not None else ""
    upper = f"<= {kind.le}" if kind.le is not None else f"< {kind.lt}" if kind.lt is not None else ""
    return ", ".join(bound for bound in (lower, upper) if bound)


def env_form(value: object) -> str:
    """``value`` as it would be written in the environment; an absent value is "unset"."""
    if value is None or value == ():
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def masked(value: object) -> str:
    """A secret as it may be printed: a URL without its password, tokens only counted."""
    if value is None or value == ():
        return "unset"
    if isinstance(value, tuple):
        return ",".join(MASK for _ in value)
    if isinstance(value, str):
        return mask_url(value)
    return MASK


def mask_url(url: str) -> str:
    """``url`` with its password hidden, whether in the user info or a ``password=`` parameter
    (libpq reads both); anything that is not a URL is hidden whole."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return MASK
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{MASK}@{host}"
    query = "&".join(_mask_parameter(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def _mask_parameter(pair: str) -> str:
    name, equals, _value = pair.partition("=")
    return f"{name}={MASK}" if equals and unquote(name).lower() == "password" else pair


# --- the command's text and the markdown table ------------------------------------------------


def effective_report(settings: Settings) -> str:
    """What ``orders-api config`` prints: every variable, its effective value (secrets masked),
    then its type, default, bounds and meaning."""
    blocks = [
        "Configuration as `orders-api serve` reads it from the environment (secrets masked);"
        " docs/configuration.md has the same table."
    ]
    for variable in variables():
        value = getattr(settings, variable.attribute)
        shown = masked(value) if variable.secret else env_form(value)
        facts = ", ".join(fact for fact in (variable.type, variable.bounds, f"default {variable.default}") if fact)
        meaning = textwrap.fill(variable.meaning, width=100, initial_indent="    ", subsequent_indent="    ")
        blocks.append(f"{variable.name}={shown}\n    {facts}\n{meaning}")
    return "\n\n".join(blocks)


REGENERATE = "orders-api config --markdown > docs/configuration.md"

INTRODUCTION = f"""\
# Configuration

<!-- Generated from shared/config.py (Settings) by `{REGENERATE}`:
     edit the field descriptions there, then regenerate; tests/test_docs.py checks this file. -->

Every knob is an environment variable, read once at start-up (`Settings.from_env`). An invalid value
stops start-up with a message naming the variable; an unknown `WRITE_*` or `READ_*` variable is warned
about and ignored; an empty value counts as unset. Booleans are `true` or `false` (`1`/`0` too), lists
are comma-separated. Set `DATABASE_URL`, or both `WRITE_DATABASE_URL` and `READ_DATABASE_URL`, or none
(the embedded PostgreSQL); `READ_POOL_MIN_SIZE` may not exceed `READ_POOL_MAX_SIZE`.

`orders-api config` prints this table with each variable's effective value, database passwords and API
tokens masked. `orders-api pools` shows the pools' settings against the server's `max_connections`.
"""


def configuration_markdown() -> str:
    rows = ["| variable | type | default | bounds | meaning |", "|---|---|---|---|---|"]
    for v in variables():
        cells = (f"`{v.name}`", v.type, f"`{v.default}`", v.bounds, v.meaning)
        rows.append("| " + " | ".join(table_cell(cell) for cell in cells) + " |")
    return INTRODUCTION + "\n" + "\n".join(rows) + "\n"


def table_cell(text: str) -> str:
    """``text`` safe inside a GitHub table cell, code spans included (where ``\\|`` is a pipe too)."""
    return text.replace("|", "\\|")
