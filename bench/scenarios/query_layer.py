"""Query layer, in process: the service's read queries against the ORMs that would otherwise answer them.

What it shows: the cost of the read side's query layer alone, with no HTTP, no server and no load
generator in the way. Three contenders answer the same three questions (an order by id with its
customer and items, a product by id, a page of one customer's newest orders), one call at a time:

- "service": the read side's own functions on a ``ReadPool``: one round trip each, the view built
  as JSON in PostgreSQL and decoded straight into the msgspec Struct;
- "async ORM": SQLAlchemy 2's async ORM on asyncpg, the way such a service is usually built;
- "sync ORM (psycopg 3)": SQLAlchemy 2's classic sync ORM on psycopg 3, called right in the event
  loop (it blocks it, which costs nothing here: nothing else runs).

How it is fair: every contender returns the very same view (checked on a few ids of each case before
anything is timed, or the run stops), so none is timed for doing less. Within a round all of them
answer the same seeded random ids, so they read the same rows, and their order rotates from round to
round, so the same one does not always run first. Each is warmed up before its first timed call. The
ORMs load eagerly with ``selectinload``, open one session per call, and build the views with the write
side's own conversions; the page is cut and its cursor sealed by the same ``page_of`` as the service's.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import Engine, Select, create_engine, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.orm.interfaces import ORMOption

from bench.core import Context, Measurement, Sizes, quantile_ms
from reads.cursor import page_of
from reads.db import ReadPool
from reads.params import OrderListing
from reads.queries import orders, products
from shared.config import Settings, sqlalchemy_url
from shared.dto import OrderCustomer, OrderStatus, OrderSummary, OrderView, Page, ProductView
from writes.handlers.orders import order_view
from writes.handlers.products import product_view
from writes.models import Order, OrderItem, Product

SCENARIO = "query-layer"
ORDER, PRODUCT, PAGE = "order by id", "product by id", "customer's orders page"
SERVICE, ASYNC_ORM, SYNC_ORM = "service", "async ORM", "sync ORM (psycopg 3)"
PAGE_SIZE = 20
WARM_UP_CALLS = 20
VERIFIED_IDS = 5
SEED = 20240601
# The ORMs get a small pool of their own: calls are sequential, so one connection is ever in use.
ORM_POOL = {"pool_size": 2, "max_overflow": 0}

# One question put to one contender: an id in, a view out.
Ask = Callable[[int], Awaitable[object]]


@dataclass(frozen=True)
class Case:
    name: str
    highest_id: int  # ids are drawn from 1..highest_id


@dataclass(frozen=True)
class Contender:
    name: str
    asks: Mapping[str, Ask]  # by case name


async def run(ctx: Context) -> list[Measurement]:
    """Verify, then time, every contender on every case; one Measurement per (case, contender)."""
    async with AsyncExitStack() as stack:  # every pool and engine is closed, on error too
        contenders = await open_contenders(ctx.database_url, stack)
        cases = [Case(ORDER, ctx.sizes.orders), Case(PRODUCT, ctx.sizes.products), Case(PAGE, ctx.sizes.customers)]
        draw = random.Random(SEED)
        for case in cases:
            await verify(case, contenders, draw)
        latencies = await time_rounds(cases, contenders, ctx.sizes, draw)
        return [measurement(case, contender, took) for (case, contender), took in latencies.items()]


# --- the contenders ------------------------------------------------------------------------------


async def open_contenders(database_url: str, stack: AsyncExitStack) -> list[Contender]:
    pool = await ReadPool.open(Settings(database_url=database_url))
    stack.push_async_callback(pool.close)
    async_engine = create_async_engine(sqlalchemy_url(database_url), **ORM_POOL)
    stack.push_async_callback(async_engine.dispose)
    sync_engine = create_engine(
        psycopg_url(database_url),
        # The read pool's sessions are in UTC too; psycopg returns timestamps in the session's zone.
        connect_args={"options": "-c TimeZone=UTC"},
        **ORM_POOL,
    )
    stack.callback(sync_engine.dispose)
    return [service(pool), async_orm(async_engine), sync_orm(sync_engine)]


def psycopg_url(url: str) -> str:
    """``url`` in SQLAlchemy's form for psycopg 3 (as ``shared.config.sqlalchemy_url`` does for asyncpg)."""
    return urlunsplit(urlsplit(url)._replace(scheme="postgresql+psycopg"))


def listing(customer_id: int) -> OrderListing:
    return OrderListing(customer_id=customer_id, limit=PAGE_SIZE)


def service(pool: ReadPool) -> Contender:
    return Contender(
        SERVICE,
        {
            ORDER: lambda order_id: orders.order_by_id(pool, order_id),
            PRODUCT: lambda product_id: products.product_by_id(pool, product_id),
            PAGE: lambda customer_id: orders.order_page(pool, listing(customer_id)),
        },
    )


def async_orm(engine: AsyncEngine) -> Contender:
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def order(order_id: int) -> OrderView | None:
        async with sessions() as session:
            found = await session.get(Order, order_id, options=order_loading())
            return None if found is None else loaded_order_view(found)

    async def product(product_id: int) -> ProductView | None:
        async with sessions() as session:
            found = await session.get(Product, product_id)
            return None if found is None else product_view(found)

    async def page(customer_id: int) -> Page[OrderSummary]:
        async with sessions() as session:
            rows = (await session.scalars(page_statement(customer_id))).all()
            return page_view(customer_id, rows)

    return Contender(ASYNC_ORM, {ORDER: order, PRODUCT: product, PAGE: page})


def sync_orm(engine: Engine) -> Contender:
    sessions = sessionmaker(engine, expire_on_commit=False)

    def order(session: Session, order_id: int) -> OrderView | None:
        found = session.get(Order, order_id, options=order_loading())
        return None if found is None else loaded_order_view(found)

    def product(session: Session, product_id: int) -> ProductView | None:
        found = session.get(Product, product_id)
        return None if found is None else product_view(found)

    def page(session: Session, customer_id: int) -> Page[OrderSummary]:
        return page_view(customer_id, session.scalars(page_statement(customer_id)).all())

    def blocking(query: Callable[[Session, int], object]) -> Ask:
        # A coroutine only so the timing loop treats every contender alike; the call blocks the loop.
        async def ask(key: int) -> object:
            with sessions() as session:
                return query(session, key)

        return ask

    return Contender(SYNC_ORM, {ORDER: blocking(order), PRODUCT: blocking(product), PAGE: blocking(page)})


def order_loading() -> list[ORMOption]:
    # The models' relationships raise rather than lazy-load: everything the view needs comes up front.
    return [selectinload(Order.customer), selectinload(Order.items).selectinload(OrderItem.product)]


def loaded_order_view(order: Order) -> OrderView:
    """The service's order view of an order loaded with ``order_loading``."""
    customer = OrderCustomer(id=order.customer.id, email=order.customer.email, name=order.customer.name)
    return order_view(order, customer, {item.product_id: item.product for item in order.items})


def page_statement(customer_id: int) -> Select[Order]:
    # One more than a page, as the service fetches, to know whether a next page exists.
    return (
        select(Order)
        .where(Order.customer_id == customer_id)
        .order_by(Order.created_at.desc(), Order.id.desc())
        .limit(PAGE_SIZE + 1)
    )


def page_view(customer_id: int, rows: Sequence[Order]) -> Page[OrderSummary]:
    summaries = [
        OrderSummary(
            id=row.id,
            customer_id=row.customer_id,
            status=cast(OrderStatus, row.status),  # the column's CHECK keeps it one
            item_count=row.item_count,
            total_cents=row.total_cents,
            created_at=row.created_at,
        )
        for row in rows
    ]
    bound_to = ("orders", *listing(customer_id).values())  # the service's seal, so the cursors are equal
    return page_of(summaries, PAGE_SIZE, lambda summary: (summary.created_at, summary.id), bound_to=bound_to)


# --- verifying and timing ------------------------------------------------------------------------


async def verify(case: Case, contenders: Sequence[Contender], draw: random.Random) -> None:
    """Every contender gives the first one's view for a few ids: nobody is timed for doing less."""
    for key in (draw.randint(1, case.highest_id) for _ in range(VERIFIED_IDS)):
        expected = await contenders[0].asks[case.name](key)
        assert expected is not None, f"{case.name}: {contenders[0].name} found nothing for id {key}: is it seeded?"
        for contender in contenders[1:]:
            got = await contender.asks[case.name](key)
            assert got == expected, (
                f"{case.name}, id {key}: {contender.name} answered {got!r}, {contenders[0].name} {expected!r}"
            )


async def time_rounds(
    cases: Sequence[Case], contenders: Sequence[Contender], sizes: Sizes, draw: random.Random
) -> dict[tuple[str, str], list[int]]:
    """Per-call nanoseconds by (case, contender) name, the contenders alternating round by round."""
    latencies: dict[tuple[str, str], list[int]] = defaultdict(list)
    for round_no in range(sizes.rounds):
        # Rotated, so the same contender is not always the first to read a round's rows.
        turn = round_no % len(contenders)
        in_order = [*contenders[turn:], *contenders[:turn]]
        for case in cases:
            keys = [draw.randint(1, case.highest_id) for _ in range(sizes.calls)]
            for contender in in_order:
                ask = contender.asks[case.name]
                if round_no == 0:
                    await timed(ask, [draw.randint(1, case.highest_id) for _ in range(WARM_UP_CALLS)])
                latencies[case.name, contender.name] += await timed(ask, keys)
    return latencies


async def timed(ask: Ask, keys: Sequence[int]) -> list[int]:
    """Nanoseconds of each call, one after the other."""
    took = []
    for key in keys:
        started = time.perf_counter_ns()
        await ask(key)
        took.append(time.perf_counter_ns() - started)
    return took


def measurement(case: str, contender: str, nanoseconds: Sequence[int]) -> Measurement:
    ordered = sorted(nanoseconds)
    seconds = sum(ordered) / 1e9
    return Measurement(
        scenario=SCENARIO,
        case=case,
        contender=contender,
        rate=len(ordered) / seconds,
        p50_ms=quantile_ms([ns / 1e9 for ns in ordered], 0.50),
        p99_ms=quantile_ms([ns / 1e9 for ns in ordered], 0.99),
        count=len(ordered),
        extra={"mean_ms": seconds * 1e3 / len(ordered)},
    )
