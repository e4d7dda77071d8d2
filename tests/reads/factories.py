"""The data a read test needs, made through the write side's commands.

Each method returns the command's response body, so a test can compare it with what the query
side answers for the same resource. What no command can do (place an order on a past day) is
done with SQL on the ``db`` connection, and named as such.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from typing import Any

import asyncpg
import httpx

from tests.support import AUTH

Body = dict[str, Any]

_serial = itertools.count(1)


class Shop:
    def __init__(self, client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
        self.client = client
        self.db = db

    async def _command(self, path: str, body: Body | None = None, expect: int = 200) -> Body:
        response = await self.client.post(path, json=body, headers=AUTH)
        assert response.status_code == expect, response.text
        result: Body = response.json()
        return result

    async def customer(self, *, email: str | None = None, name: str = "Ada Lovelace") -> Body:
        email = email or f"customer{next(_serial)}@example.com"
        return await self._command("/v1/customers", {"email": email, "name": name}, expect=201)

    async def product(
        self, *, sku: str | None = None, name: str = "Widget", price_cents: int = 1000, stock: int = 1000
    ) -> Body:
        body = {"sku": sku or f"SKU-{next(_serial)}", "name": name, "price_cents": price_cents, "stock": stock}
        return await self._command("/v1/products", body, expect=201)

    async def reprice(self, product_id: int, price_cents: int) -> Body:
        return await self._command(f"/v1/products/{product_id}/reprice", {"price_cents": price_cents})

    async def order(self, customer_id: int, lines: list[tuple[int, int]]) -> Body:
        """Place an order of ``(product_id, quantity)`` lines."""
        items = [{"product_id": product_id, "quantity": quantity} for product_id, quantity in lines]
        return await self._command("/v1/orders", {"customer_id": customer_id, "items": items}, expect=201)

    async def pay(self, order_id: int) -> Body:
        return await self._command(f"/v1/orders/{order_id}/pay")

    async def ship(self, order_id: int) -> Body:
        return await self._command(f"/v1/orders/{order_id}/ship")

    async def cancel(self, order_id: int) -> Body:
        return await self._command(f"/v1/orders/{order_id}/cancel")

    async def backdate(self, order_id: int, created_at: datetime) -> None:
        """SQL, because no command places an order in the past. Only while the order is pending:
        paying it counts its sale on its day in the read models, which a later move would leave behind."""
        status = await self.db.execute(
            "UPDATE orders SET created_at = $2 WHERE id = $1 AND status = 'pending'", order_id, created_at
        )
        assert status == "UPDATE 1", f"backdate order {order_id} before paying or cancelling it"
