"""Orders: place one (taking stock atomically), and move it through pay, ship and cancel."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import NamedTuple, NoReturn, Protocol, cast

from sqlalchemy import BigInteger, Boolean, Integer, String, any_, bindparam, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import joinedload

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
            product_id=line.product_id,
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
    return order_view(order, products)


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
        await move_stock(session, {item.product_id: item.quantity for item in order.items})
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


class Taken(NamedTuple):
    """A product whose stock a command moved, as the UPDATE left it: what an order's view needs of it."""

    id: int
    sku: str
    name: str
    price_cents: int


# Moves stock by a delta per product in one round trip, taken (< 0) or returned (> 0): the products
# are locked in id order first (the MATERIALIZED CTE runs whole before the UPDATE), so two commands
# sharing products queue behind each other instead of deadlocking, and the conditional UPDATE
# itself, which re-reads a row changed since the statement began, never takes a stock below zero.
# FOR NO KEY UPDATE: the key is not changed, so foreign-key checks and an import's FOR KEY SHARE on
# the same rows go on. A product that is short, or unknown, matches no row and is not returned.
MOVE_STOCK = text("""
    WITH locked AS MATERIALIZED (
        SELECT id FROM products WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE
    )
    UPDATE products AS p
       SET stock = p.stock + d.delta, version = p.version + 1, updated_at = now()
      FROM locked JOIN unnest(:ids, :deltas) AS d (id, delta) ON d.id = locked.id
     WHERE p.id = d.id AND p.stock + d.delta >= 0
    RETURNING p.id, p.sku, p.name, p.price_cents
""").bindparams(bindparam("ids", type_=ARRAY(BigInteger)), bindparam("deltas", type_=ARRAY(BigInteger)))
STOCKS = select(Product.id, Product.stock).where(Product.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))


async def moved_stock(session: AsyncSession, deltas: dict[int, int]) -> dict[int, Taken]:
    """Add each delta to its product's stock (``MOVE_STOCK``); the products it moved, by id."""
    result = await session.execute(MOVE_STOCK, {"ids": list(deltas), "deltas": list(deltas.values())})
    return {row.id: Taken(*row) for row in result}


async def take_stock(session: AsyncSession, wanted: dict[int, int]) -> dict[int, Taken]:
    """Take ``wanted`` units of each product, or nothing at all: 404 for unknown products, 409
    naming every product that is short. The rows stay locked until the order commits."""
    taken = await moved_stock(session, {product_id: -quantity for product_id, quantity in wanted.items()})
    if len(taken) < len(wanted):
        await explain_shortage(session, wanted, taken.keys())
    return taken


async def explain_shortage(session: AsyncSession, wanted: dict[int, int], taken: Collection[int]) -> NoReturn:
    stocks = {row.id: row.stock for row in await session.execute(STOCKS, {"ids": list(wanted)})}
    missing = [f"product {product_id} not found" for product_id in wanted if product_id not in stocks]
    if missing:
        raise NotFound("; ".join(missing))
    raise InsufficientStock(
        "; ".join(
            f"product {product_id} has {stocks[product_id]} in stock, {quantity} requested"
            for product_id, quantity in wanted.items()
            if product_id not in taken
        )
    )


async def move_stock(session: AsyncSession, deltas: dict[int, int]) -> None:
    """Add each delta to its product's stock, or nothing at all (409): a cancel returning what its
    order took. The statement's condition never refuses here, since the stock was taken before; it
    is what keeps the invariant true at the statement itself, whatever the code before it does."""
    moved = await moved_stock(session, deltas)
    if len(moved) != len(deltas):
        short = ", ".join(f"product {product_id}" for product_id in sorted(deltas.keys() - moved.keys()))
        raise InsufficientStock(f"{short}: not enough in stock")


# The statements here are built once, with bound parameters: SQLAlchemy then computes each one's
# cache key once, where a statement built per call paid for its construction and its cache key on
# every command (both showed in the profile).

# The row as this UPDATE changes it, locked first: a pay committed meanwhile is the status read here
# (after waiting for it), where RETURNING a subquery would see the statement's older snapshot. FOR
# NO KEY UPDATE is the lock the UPDATE takes anyway. The order is reloaded after (``load_order``),
# so the session need not learn of the change (synchronize_session=False).
_CURRENT = (
    select(Order.id, Order.status, Order.version)
    .where(Order.id == bindparam("order_id", type_=BigInteger))
    .with_for_update(key_share=True)
    .subquery("current")
)
CHANGE_STATUS = (
    update(Order)
    .where(
        Order.id == _CURRENT.c.id,
        _CURRENT.c.status == any_(bindparam("sources", type_=ARRAY(String))),
        or_(
            bindparam("any_version", type_=Boolean),
            _CURRENT.c.version == any_(bindparam("versions", type_=ARRAY(Integer))),
        ),
    )
    .values(status=bindparam("target", type_=String), version=Order.version + 1, updated_at=func.now())
    .returning(_CURRENT.c.status)
    .execution_options(synchronize_session=False)
)


async def change_status(session: AsyncSession, order_id: int, if_match: IfMatch, rule: Transition) -> OrderStatus:
    """Compare-and-set in one UPDATE: the status (and the version, with If-Match) must still be
    what the rule allows; when no row matched, ``explain_refusal`` says why. Returns the status
    the order had: a cancel takes a sale back out of the read models only if it was paid."""
    parameters = {
        "order_id": order_id,
        "sources": list(rule.sources),
        "any_version": if_match is None,
        "versions": [] if if_match is None else list(if_match),
        "target": rule.target,
    }
    was = await session.scalar(CHANGE_STATUS, parameters)
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


# One round trip: the order with its customer, items and their products joined (an order has at
# most 100 items, so the rows repeat the order's columns at most 100 times).
LOAD_ORDER = (
    select(Order)
    .where(Order.id == bindparam("order_id", type_=BigInteger))
    .options(joinedload(Order.customer), joinedload(Order.items).joinedload(OrderItem.product))
    .execution_options(populate_existing=True)
)


async def load_order(session: AsyncSession, order_id: int) -> Order:
    return (await session.scalars(LOAD_ORDER, {"order_id": order_id})).unique().one()


def order_view(order: Order, products: Mapping[int, Taken] | None = None) -> OrderView:
    """The view of ``order``, whose items' products are loaded, or given as ``products`` by id (a
    placed order's: the stock it took returned them)."""
    described = products if products is not None else {item.product_id: item.product for item in order.items}
    return OrderView(
        id=order.id,
        customer=OrderCustomer(id=order.customer.id, email=order.customer.email, name=order.customer.name),
        status=cast(OrderStatus, order.status),  # the column's CHECK keeps it one
        items=[
            OrderItemView(
                product_id=item.product_id,
                sku=described[item.product_id].sku,
                name=described[item.product_id].name,
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
