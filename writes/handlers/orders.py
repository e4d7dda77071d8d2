"""Orders: place one (taking stock atomically), and move it through pay, ship and cancel."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple, NoReturn, Protocol, cast

from sqlalchemy import BigInteger, bindparam, func, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload, selectinload

from shared.dto import OrderCustomer, OrderItemView, OrderStatus, OrderView, PlaceOrder
from shared.errors import InsufficientStock, InvalidInput, InvalidTransition, NotFound, VersionMismatch
from writes import readmodels
from writes.models import Customer, Order, OrderItem, Product


class Line(Protocol):
    """A line of a placed or an imported order."""

    @property
    def product_id(self) -> int: ...

    @property
    def quantity(self) -> int: ...


# The versions a client's If-Match names; None when it named none (no precondition).
IfMatch = frozenset[int] | None


class Transition(NamedTuple):
    verb: str
    sources: tuple[OrderStatus, ...]
    target: OrderStatus


PAY = Transition("pay", ("pending",), "paid")
SHIP = Transition("ship", ("paid",), "shipped")
CANCEL = Transition("cancel", ("pending", "paid"), "cancelled")


async def place_order(command: PlaceOrder, session: AsyncSession) -> OrderView:
    wanted = requested_quantities(command.items)
    customer = await session.get(Customer, command.customer_id)
    if customer is None:
        raise NotFound(f"customer {command.customer_id} not found")
    products = await take_stock(session, wanted)
    items = [
        OrderItem(
            line_no=n,
            product=products[line.product_id],
            quantity=line.quantity,
            unit_price_cents=products[line.product_id].price_cents,
        )
        for n, line in enumerate(command.items, start=1)
    ]
    order = Order(
        customer=customer,
        status="pending",
        item_count=sum(item.quantity for item in items),
        total_cents=sum(item.quantity * item.unit_price_cents for item in items),
        items=items,
    )
    session.add(order)
    # The INSERT returns id, version and both timestamps: the view shows what the row holds.
    await session.flush()
    await readmodels.record_placed(session, command.customer_id)
    return order_view(order)


async def pay_order(order_id: int, if_match: IfMatch, session: AsyncSession) -> OrderView:
    await change_status(session, order_id, if_match, PAY)
    order = await load_order(session, order_id)
    await readmodels.record(session, readmodels.PAID, [order_id])
    return order_view(order)


async def ship_order(order_id: int, if_match: IfMatch, session: AsyncSession) -> OrderView:
    # Paid and shipped orders count alike in every read model: shipping changes none of them.
    await change_status(session, order_id, if_match, SHIP)
    return order_view(await load_order(session, order_id))


async def cancel_order(order_id: int, if_match: IfMatch, session: AsyncSession) -> OrderView:
    was = await change_status(session, order_id, if_match, CANCEL)
    order = await load_order(session, order_id)
    if order.took_stock:  # an imported order never took any: returning it would mint stock
        returned = {item.product_id: item.quantity for item in order.items}
        await lock_products(session, returned)
        await move_stock(session, returned)
    if was == "paid":
        await readmodels.record(session, readmodels.REFUNDED, [order_id])
    return order_view(order)


def requested_quantities(items: Sequence[Line]) -> dict[int, int]:
    """Quantity per product; a product named on two lines is a 422 (one line per product)."""
    wanted: dict[int, int] = {}
    for index, line in enumerate(items):
        if line.product_id in wanted:
            raise InvalidInput(
                f"product {line.product_id} appears on more than one line - at $.items[{index}].product_id"
            )
        wanted[line.product_id] = line.quantity
    return wanted


async def take_stock(session: AsyncSession, wanted: dict[int, int]) -> dict[int, Product]:
    """Take ``wanted`` units of each product, or nothing at all: 404 for unknown products, 409
    naming every product that is short. The rows stay locked until the order commits."""
    products = await lock_products(session, wanted)
    missing = [f"product {product_id} not found" for product_id in wanted if product_id not in products]
    if missing:
        raise NotFound("; ".join(missing))
    short = [
        f"product {product.id} has {product.stock} in stock, {wanted[product.id]} requested"
        for product in products.values()
        if product.stock < wanted[product.id]
    ]
    if short:
        raise InsufficientStock("; ".join(short))
    await move_stock(session, {product_id: -quantity for product_id, quantity in wanted.items()})
    return products


async def lock_products(session: AsyncSession, product_ids: Collection[int]) -> dict[int, Product]:
    # Every transaction that touches stock locks its products in id order, so two orders sharing
    # products queue behind each other instead of deadlocking. FOR NO KEY UPDATE (key_share): the key
    # is not changed, so foreign-key checks and an import's FOR KEY SHARE on the same rows go on.
    statement = select(Product).where(Product.id.in_(product_ids)).order_by(Product.id).with_for_update(key_share=True)
    return {product.id: product for product in await session.scalars(statement)}


async def move_stock(session: AsyncSession, deltas: dict[int, int]) -> None:
    """Add each delta to its product's stock in one conditional statement: a row whose stock the
    delta would take below zero is left alone, and then nothing of the order is kept (409).

    The rows are already locked and checked, so the condition never refuses here; it is what keeps
    the invariant true at the statement itself, whatever the code before it does."""
    batch = (
        func.unnest(
            bindparam("ids", list(deltas), type_=ARRAY(BigInteger)),
            bindparam("deltas", list(deltas.values()), type_=ARRAY(BigInteger)),
        )
        .table_valued("id", "delta")
        .render_derived(name="deltas")
    )
    statement = (
        update(Product)
        .where(Product.id == batch.c.id, Product.stock + batch.c.delta >= 0)
        .values(stock=Product.stock + batch.c.delta, version=Product.version + 1, updated_at=func.now())
        .returning(Product.id)
        .execution_options(synchronize_session=False)
    )
    moved = set(await session.scalars(statement))
    if len(moved) != len(deltas):
        short = ", ".join(f"product {product_id}" for product_id in sorted(set(deltas) - moved))
        raise InsufficientStock(f"{short}: not enough in stock")


async def change_status(session: AsyncSession, order_id: int, if_match: IfMatch, rule: Transition) -> OrderStatus:
    """Compare-and-set in one UPDATE: the status (and the version, with If-Match) must still be
    what the rule allows; when no row matched, ``explain_refusal`` says why. Returns the status
    the order had: a cancel takes a sale back out of the read models only if it was paid."""
    # The row as this UPDATE changes it, locked first: a pay committed meanwhile is the status
    # read here (after waiting for it), where RETURNING a subquery would see the statement's
    # older snapshot. FOR NO KEY UPDATE is the lock the UPDATE takes anyway.
    current = (
        select(Order.id, Order.status, Order.version)
        .where(Order.id == order_id)
        .with_for_update(key_share=True)
        .subquery("current")
    )
    conditions = [Order.id == current.c.id, current.c.status.in_(rule.sources)]
    if if_match is not None:
        conditions.append(current.c.version.in_(if_match))
    statement = (
        update(Order)
        .where(*conditions)
        .values(status=rule.target, version=Order.version + 1, updated_at=func.now())
        .returning(current.c.status)
    )
    was = await session.scalar(statement)
    if was is None:
        await explain_refusal(session, order_id, if_match, rule)
    return cast(OrderStatus, was)  # one of rule.sources: the UPDATE matched only those


async def explain_refusal(session: AsyncSession, order_id: int, if_match: IfMatch, rule: Transition) -> NoReturn:
    row = (await session.execute(select(Order.status, Order.version).where(Order.id == order_id))).one_or_none()
    if row is None:
        raise NotFound(f"order {order_id} not found")
    if if_match is not None and row.version not in if_match:
        raise VersionMismatch(
            f"order {order_id} is at version {row.version}; If-Match names "
            + (", ".join(f'"{version}"' for version in sorted(if_match)) or "no valid version")
        )
    raise InvalidTransition(f"order {order_id} is {row.status}; {rule.verb} needs {' or '.join(rule.sources)}")


async def load_order(session: AsyncSession, order_id: int) -> Order:
    statement = (
        select(Order)
        .where(Order.id == order_id)
        .options(joinedload(Order.customer), selectinload(Order.items).joinedload(OrderItem.product))
        .execution_options(populate_existing=True)
    )
    return (await session.scalars(statement)).one()


def order_view(order: Order) -> OrderView:
    return OrderView(
        id=order.id,
        customer=OrderCustomer(id=order.customer.id, email=order.customer.email, name=order.customer.name),
        status=cast(OrderStatus, order.status),  # the column's CHECK keeps it one
        items=[
            OrderItemView(
                product_id=item.product.id,
                sku=item.product.sku,
                name=item.product.name,
                quantity=item.quantity,
                unit_price_cents=item.unit_price_cents,
                line_total_cents=item.quantity * item.unit_price_cents,
            )
            for item in order.items
        ],
        item_count=order.item_count,
        total_cents=order.total_cents,
        version=order.version,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )
