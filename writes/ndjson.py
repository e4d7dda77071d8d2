"""Decoding the order import: NDJSON, one ``ImportedOrder`` a line, every line validated."""

from __future__ import annotations

import msgspec
from starlette.requests import Request

from shared.dto import ImportedOrder
from shared.errors import InvalidInput
from shared.http import decode_typed, media_type
from writes.handlers import OrderImport
from writes.handlers.orders import requested_quantities

MEDIA_TYPES = ("application/x-ndjson", "application/jsonl")
MAX_ORDERS = 100_000


def is_ndjson(request: Request) -> bool:
    return media_type(request) in MEDIA_TYPES


def decode_orders(body: bytes) -> OrderImport:
    """Every order with its line number; a 422 naming the first line that is not a valid order.
    Blank lines (a trailing newline, say) are skipped but still counted, so numbers match an editor's."""
    orders: list[ImportedOrder] = []
    lines: list[int] = []
    for number, line in enumerate(body.split(b"\n"), start=1):
        if not line.strip():
            continue
        if len(orders) == MAX_ORDERS:
            raise InvalidInput(f"line {number}: an import holds at most {MAX_ORDERS} orders")
        try:
            order = decode_typed(line, ImportedOrder)
            requested_quantities(order.items)
        except msgspec.DecodeError as exc:  # malformed JSON and schema violations alike
            raise InvalidInput(f"line {number}: {exc}") from None
        except UnicodeDecodeError:
            raise InvalidInput(f"line {number}: not valid UTF-8") from None
        except InvalidInput as exc:
            raise InvalidInput(f"line {number}: {exc}") from None
        orders.append(order)
        lines.append(number)
    if not orders:
        raise InvalidInput("the body holds no orders")
    return OrderImport(orders, lines)
