"""The constant-body ceiling: a raw ASGI callable, no framework, no database.

Every HTTP request gets 200 and the same prepared body: a three-line order as the service renders
one (about 600 bytes). Nothing any contender does per request can be cheaper, so its rate is what
uvicorn and the load generator allow on this machine; the others are read against it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Receive, Scope, Send


def _item(product_id: int, quantity: int, unit_price_cents: int) -> dict[str, object]:
    return {
        "product_id": product_id,
        "sku": f"DEMO-{product_id:05}",
        "name": f"Demo product {product_id:05}",
        "quantity": quantity,
        "unit_price_cents": unit_price_cents,
        "line_total_cents": quantity * unit_price_cents,
    }


# An order of the seeded data as GET /v1/orders/{id} returns it, compact like msgspec writes it.
BODY = json.dumps(
    {
        "id": 10,
        "customer": {"id": 31, "email": "customer000031@demo.example", "name": "Customer 31"},
        "status": "paid",
        "items": [_item(17, 2, 1011), _item(15, 1, 4202), _item(34, 1, 1165)],
        "item_count": 4,
        "total_cents": 7389,
        "version": 1,
        "created_at": "2026-08-30T11:29:14.555952Z",
        "updated_at": "2026-08-30T11:29:14.555952Z",
    },
    separators=(",", ":"),
).encode()

START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())],
}
RESPONSE_BODY = {"type": "http.response.body", "body": BODY}


async def ceiling(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http":
        # The request (a GET) has no body worth reading: answer at once.
        await send(START)
        await send(RESPONSE_BODY)
    elif scope["type"] == "lifespan":
        # Nothing to open or close, but uvicorn waits for both acknowledgements.
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_app() -> ASGIApp:
    return ceiling
