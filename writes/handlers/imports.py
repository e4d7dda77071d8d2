"""The NDJSON order import: historical orders, all or nothing, stock untouched."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import BigInteger, any_, bindparam, insert, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from shared.dto import ImportedOrder, ImportResult
from shared.errors import InvalidInput
from writes.models import Customer, Order, OrderItem, Product


@dataclass(frozen=True)
class OrderImport:
    """The decoded file: each order with the line it came from, so errors can name the line."""

    orders: list[ImportedOrder]
    lines: list[int]


async def import_orders(command: OrderImport, session: AsyncSession) -> ImportResult:
    await _require_known_ids(session, command)
    # A list of parameter sets makes this the ORM's bulk INSERT: insertmanyvalues batches many
    # rows into each statement, and sort_by_parameter_order pairs the ids with their orders.
    order_ids = (
        await session.scalars(
            insert(Order).returning(Order.id, sort_by_parameter_order=True),
            [_order_row(order) for order in command.orders],
        )
    ).all()
    item_rows = [
        {"order_id": order_id, "line_no": n, **item}
        for order_id, order in zip(order_ids, command.orders, strict=True)
        for n, item in enumerate(_item_rows(order), start=1)
    ]
    await session.execute(insert(OrderItem), item_rows)
    return ImportResult(imported=len(order_ids))


def _order_row(order: ImportedOrder) -> dict[str, Any]:
    return {
        "customer_id": order.customer_id,
        "status": order.status,
        "item_count": sum(item.quantity for item in order.items),
        "total_cents": sum(item.quantity * item.unit_price_cents for item in order.items),
        "created_at": order.created_at,
        "updated_at": order.created_at,
    }


def _item_rows(order: ImportedOrder) -> list[dict[str, Any]]:
    return [
        {"product_id": item.product_id, "quantity": item.quantity, "unit_price_cents": item.unit_price_cents}
        for item in order.items
    ]


async def _require_known_ids(session: AsyncSession, command: OrderImport) -> None:
    """A 422 naming the first line that refers to a customer or product that does not exist."""
    customers = await _existing(session, Customer.id, {order.customer_id for order in command.orders})
    products = await _existing(
        session, Product.id, {item.product_id for order in command.orders for item in order.items}
    )
    for line, order in zip(command.lines, command.orders, strict=True):
        if order.customer_id not in customers:
            raise InvalidInput(f"line {line}: customer {order.customer_id} not found - at $.customer_id")
        for index, item in enumerate(order.items):
            if item.product_id not in products:
                raise InvalidInput(f"line {line}: product {item.product_id} not found - at $.items[{index}].product_id")


async def _existing(session: AsyncSession, column: InstrumentedAttribute[int], ids: set[int]) -> set[int]:
    # One array parameter: an IN list of 100 000 ids would pass the protocol's 32 767 parameters.
    wanted = bindparam("ids", list(ids), type_=ARRAY(BigInteger))
    return set(await session.scalars(select(column).where(column == any_(wanted))))
