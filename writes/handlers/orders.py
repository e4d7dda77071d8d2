"""Orders: place one (taking stock atomically), and move it through pay, ship and cancel."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from datetime import datetime
from typing import NamedTuple, NoReturn, Protocol, cast

from asyncpg import Record
from sqlalchemy import BigInteger, Boolean, Integer, String, any_, bindparam, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.attributes import set_committed_value

from shared.dto import OrderCustomer, OrderItemView, OrderStatus, OrderView, PlaceOrder
from shared.errors import InsufficientStock, InvalidInput, InvalidTransition, NotFound, VersionMismatch
from writes import readmodels
from writes.models import Customer, Order, OrderItem, Product, aware
from writes.ondriver import OnDriver


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
    taken = await take_stock(session, command.customer_id, wanted)
    # The order's id and its timestamps came back with the stock (MOVE_STOCK): every column is set
    # here, so the flush sends plain INSERTs, with nothing to return, and the items are rows of a
    # known order, not members of a collection the flush would cascade through.
    items = [
        OrderItem(
            order_id=taken.order_id,
            line_no=n,
            product_id=line.product_id,
            quantity=line.quantity,
            unit_price_cents=taken.products[line.product_id].price_cents,
        )
        for n, line in enumerate(command.items, start=1)
    ]
    # The customer is set by id: the session holds only what this command adds, so the flush has
    # no loaded customer to cascade through (MOVE_STOCK read the columns the view needs of it).
    order = Order(
        id=taken.order_id,
        customer_id=command.customer_id,
        status="pending",
        item_count=sum(item.quantity for item in items),
        total_cents=sum(item.quantity * item.unit_price_cents for item in items),
        took_stock=True,
        version=1,
        created_at=taken.now,
        updated_at=taken.now,
    )
    session.add(order)
    session.add_all(items)
    await session.flush()
    set_committed_value(order, "items", items)  # what the view reads, loaded without a query
    await readmodels.record_placed(session, command.customer_id)
    return order_view(order, taken.customer, taken.products)


async def pay_order(order_id: int, if_match: IfMatch, session: AsyncSession) -> OrderView:
    changed = await change_status(session, order_id, if_match, PAY)
    await readmodels.record(session, readmodels.PAID, order_id)
    return changed.view


async def ship_order(order_id: int, if_match: IfMatch, session: AsyncSession) -> OrderView:
    # Paid and shipped orders count alike in every read model: shipping changes none of them.
    return (await change_status(session, order_id, if_match, SHIP)).view


async def cancel_order(order_id: int, if_match: IfMatch, session: AsyncSession) -> OrderView:
    changed = await change_status(session, order_id, if_match, CANCEL)
    if changed.took_stock:  # an imported order never took any: returning it would mint stock
        await return_stock(session, {item.product_id: item.quantity for item in changed.view.items})
    if changed.was == "paid":
        await readmodels.record(session, readmodels.REFUNDED, order_id)
    return changed.view


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


class Described(NamedTuple):
    """A product whose stock a command moved, as the UPDATE left it: what an order's view needs of it."""

    id: int
    sku: str
    name: str
    price_cents: int


class Taken(NamedTuple):
    """What placing an order read while taking its stock: the customer and the products, by id,
    and the new order's id and creation time."""

    customer: OrderCustomer
    products: dict[int, Described]
    order_id: int
    now: datetime


# Moves stock by a delta per product, taken (< 0) or returned (> 0), in two statements. The first
# locks the products in id order, so two commands sharing products queue behind each other instead
# of deadlocking. The second, the conditional UPDATE, then reads the very versions this transaction
# holds (its own statement, so its own snapshot) and never takes a stock below zero. In one
# statement (the lock a MATERIALIZED CTE of the UPDATE), the UPDATE read the versions its snapshot
# had, older than the ones locked when a command had changed them meanwhile, and went back along
# their updates, in no set order, to the ones it held: with an import's rows share-locking the same
# products (their foreign keys), that took tuple locks out of id order, and places deadlocked (six
# in 143 commands in ``tests/writes/test_imports.py``, each costing a second of deadlock_timeout).
# FOR NO KEY UPDATE: the key is not changed, so foreign-key checks and an import's FOR KEY SHARE on
# the same rows go on. A product that is short, or unknown, matches no row and is not returned.
# Placing an order names its customer, whose columns come back on every row (the order's view shows
# them), with the new order's id drawn from its identity and the transaction's now(), the column
# defaults the order's INSERT would otherwise return. An unknown customer moves nothing; a cancel
# names none, and draws no id.
LOCK_PRODUCTS = OnDriver(
    text("SELECT id FROM products WHERE id = ANY(:ids) ORDER BY id FOR NO KEY UPDATE").bindparams(
        bindparam("ids", type_=ARRAY(BigInteger))
    )
)
MOVE_STOCK = OnDriver(
    text("""
    WITH customer AS MATERIALIZED (
        SELECT email, name, nextval(pg_get_serial_sequence('orders', 'id')) AS order_id, now() AS now
          FROM customers WHERE id = :customer_id
    )
    UPDATE products AS p
       SET stock = p.stock + d.delta, version = p.version + 1, updated_at = now()
      FROM unnest(:ids, :deltas) AS d (id, delta) LEFT JOIN customer ON true
     WHERE p.id = d.id AND p.stock + d.delta >= 0 AND (:customer_id IS NULL OR customer.email IS NOT NULL)
    RETURNING p.id, p.sku, p.name, p.price_cents, customer.email AS customer_email, customer.name AS customer_name,
              customer.order_id, customer.now
""").bindparams(
        bindparam("customer_id", type_=BigInteger),
        bindparam("ids", type_=ARRAY(BigInteger)),
        bindparam("deltas", type_=ARRAY(BigInteger)),
    )
)
STOCKS = select(Product.id, Product.stock).where(Product.id == any_(bindparam("ids", type_=ARRAY(BigInteger))))
CUSTOMER_EXISTS = select(Customer.id).where(Customer.id == bindparam("customer_id", type_=BigInteger))


async def moved_stock(session: AsyncSession, customer_id: int | None, deltas: dict[int, int]) -> list[Record]:
    """Add each delta to its product's stock (``LOCK_PRODUCTS``, then ``MOVE_STOCK``); the rows of the
    products it moved."""
    ids = list(deltas)
    await LOCK_PRODUCTS.execute(session, {"ids": ids})
    return await MOVE_STOCK.fetch(session, {"customer_id": customer_id, "ids": ids, "deltas": list(deltas.values())})


async def take_stock(session: AsyncSession, customer_id: int, wanted: dict[int, int]) -> Taken:
    """Take ``wanted`` units of each product for an order of ``customer_id``, or nothing at all: 404
    for an unknown customer or product, 409 naming every product that is short. The rows stay
    locked until the order commits."""
    rows = await moved_stock(session, customer_id, {product_id: -quantity for product_id, quantity in wanted.items()})
    if len(rows) < len(wanted):
        await explain_shortage(session, customer_id, wanted, {row["id"] for row in rows})
    first = rows[0]
    customer = OrderCustomer(id=customer_id, email=first["customer_email"], name=first["customer_name"])
    products = {row["id"]: Described(row["id"], row["sku"], row["name"], row["price_cents"]) for row in rows}
    return Taken(customer, products, first["order_id"], first["now"])


async def explain_shortage(
    session: AsyncSession, customer_id: int, wanted: dict[int, int], taken: Collection[int]
) -> NoReturn:
    if await session.scalar(CUSTOMER_EXISTS, {"customer_id": customer_id}) is None:
        raise NotFound(f"customer {customer_id} not found")
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


async def return_stock(session: AsyncSession, deltas: dict[int, int]) -> None:
    """Add each delta to its product's stock, or nothing at all (409): a cancel returning what its
    order took. The statement's condition never refuses here, since the stock was taken before; it
    is what keeps the invariant true at the statement itself, whatever the code before it does."""
    moved = {row["id"] for row in await moved_stock(session, None, deltas)}
    if len(moved) != len(deltas):
        short = ", ".join(f"product {product_id}" for product_id in sorted(deltas.keys() - moved))
        raise InsufficientStock(f"{short}: not enough in stock")


# The order as the UPDATE leaves it, with what its view shows, in one round trip. The row is locked
# first (``current``): a pay committed meanwhile is the status read there, after waiting for it,
# where the UPDATE's RETURNING alone could not say what the status was before. FOR NO KEY UPDATE is
# the lock the UPDATE takes anyway. The order's lines (at most 100) repeat its columns. Nothing goes
# through the session's identity map: the view is built from the rows (``changed_view``).
CHANGE_STATUS = OnDriver(
    text("""
    WITH current AS MATERIALIZED (
        SELECT id, status, version FROM orders WHERE id = :order_id FOR NO KEY UPDATE
    ),
    changed AS (
        UPDATE orders AS o
           SET status = :target, version = o.version + 1, updated_at = now()
          FROM current
         WHERE o.id = current.id AND current.status = ANY(:sources)
           AND (:any_version OR current.version = ANY(:versions))
        RETURNING o.id, o.customer_id, o.status, o.item_count, o.total_cents, o.took_stock, o.version,
                  o.created_at, o.updated_at, current.status AS was
    )
    SELECT o.id, o.status, o.item_count, o.total_cents, o.took_stock, o.version, o.created_at, o.updated_at,
           o.was, c.id AS customer_id, c.email, c.name AS customer_name,
           i.product_id, i.quantity, i.unit_price_cents, p.sku, p.name AS product_name
      FROM changed o
      JOIN customers c ON c.id = o.customer_id
      JOIN order_items i ON i.order_id = o.id
      JOIN products p ON p.id = i.product_id
     ORDER BY i.line_no
""").bindparams(
        bindparam("order_id", type_=BigInteger),
        bindparam("target", type_=String),
        bindparam("sources", type_=ARRAY(String)),
        bindparam("any_version", type_=Boolean),
        bindparam("versions", type_=ARRAY(Integer)),
    )
)


class Changed(NamedTuple):
    """An order after a status change: its view, the status it had, and whether it took stock."""

    view: OrderView
    was: OrderStatus
    took_stock: bool


async def change_status(session: AsyncSession, order_id: int, if_match: IfMatch, rule: Transition) -> Changed:
    """Compare-and-set in one UPDATE: the status (and the version, with If-Match) must still be
    what the rule allows; when no row matched, ``explain_refusal`` says why. The status the order
    had comes back too: a cancel takes a sale back out of the read models only if it was paid."""
    parameters = {
        "order_id": order_id,
        "sources": list(rule.sources),
        "any_version": if_match is None,
        "versions": [] if if_match is None else list(if_match),
        "target": rule.target,
    }
    rows = await CHANGE_STATUS.fetch(session, parameters)
    if not rows:
        await explain_refusal(session, order_id, if_match, rule)
    first = rows[0]
    # Both statuses are the column's (its CHECK keeps them known); ``was`` is one of rule.sources.
    return Changed(changed_view(rows), cast(OrderStatus, first["was"]), first["took_stock"])


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


class Named(Protocol):
    """What an order line's view shows of its product."""

    @property
    def sku(self) -> str: ...

    @property
    def name(self) -> str: ...


class PricedLine(Line, Protocol):
    @property
    def unit_price_cents(self) -> int: ...


def line_view(product_id: int, sku: str, name: str, quantity: int, unit_price_cents: int) -> OrderItemView:
    """One line of an order's view: its total is the quantity at the price the order captured."""
    return OrderItemView(
        product_id=product_id,
        sku=sku,
        name=name,
        quantity=quantity,
        unit_price_cents=unit_price_cents,
        line_total_cents=quantity * unit_price_cents,
    )


def line_view_of(line: PricedLine, product: Named) -> OrderItemView:
    return line_view(line.product_id, product.sku, product.name, line.quantity, line.unit_price_cents)


def changed_view(rows: Sequence[Record]) -> OrderView:
    """The view of an order from ``CHANGE_STATUS``'s rows, one per line."""
    first = rows[0]
    return OrderView(
        id=first["id"],
        customer=OrderCustomer(id=first["customer_id"], email=first["email"], name=first["customer_name"]),
        status=cast(OrderStatus, first["status"]),
        items=[
            line_view(row["product_id"], row["sku"], row["product_name"], row["quantity"], row["unit_price_cents"])
            for row in rows
        ],
        item_count=first["item_count"],
        total_cents=first["total_cents"],
        version=first["version"],
        created_at=aware(first["created_at"]),
        updated_at=aware(first["updated_at"]),
    )


def order_view(order: Order, customer: OrderCustomer, products: Mapping[int, Named]) -> OrderView:
    """The view of ``order`` (its items loaded or just flushed), of ``customer``, whose lines name
    ``products`` by id."""
    return OrderView(
        id=order.id,
        customer=customer,
        status=cast(OrderStatus, order.status),  # the column's CHECK keeps it one
        items=[line_view_of(item, products[item.product_id]) for item in order.items],
        item_count=order.item_count,
        total_cents=order.total_cents,
        version=order.version,
        created_at=order.created_at,
        updated_at=order.updated_at,
    )
