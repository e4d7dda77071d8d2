"""The async-ORM twin: the same three reads built the way such a service usually is.

FastAPI with Pydantic v2 response models, the SQLAlchemy 2 async ORM on asyncpg (the service's own
models, ``writes.models``), one session per request from a dependency, relationships eager-loaded
with ``selectinload``. Idiomatic and unhurried, neither sabotaged nor tuned: it is what the
service's hand-written SQL and msgspec views are measured against.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations at runtime, and
# the session dependency (``Session``) is local to ``router``, where string annotations would not resolve.
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query
from pydantic import AliasPath, BaseModel, ConfigDict, Field, computed_field
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import selectinload

from shared.dto import OrderStatus
from writes.models import Order, OrderItem, Product

# --- response models: the service's views (shared.dto), field for field and in the same order ---


class View(BaseModel):
    # Read straight off the ORM objects; FastAPI validates what a route returns against its response_model.
    model_config = ConfigDict(from_attributes=True)


class ProductOut(View):
    id: int
    sku: str
    name: str
    price_cents: int
    stock: int
    version: int
    created_at: datetime
    updated_at: datetime


class OrderCustomerOut(View):
    id: int
    email: str
    name: str


class OrderItemOut(View):
    product_id: int
    sku: str = Field(validation_alias=AliasPath("product", "sku"))
    name: str = Field(validation_alias=AliasPath("product", "name"))
    quantity: int
    unit_price_cents: int

    # Without @property pydantic still makes it one, and mypy needs no ignore for the decorator.
    @computed_field
    def line_total_cents(self) -> int:
        return self.quantity * self.unit_price_cents


class OrderOut(View):
    id: int
    customer: OrderCustomerOut
    status: OrderStatus
    items: list[OrderItemOut]
    item_count: int
    total_cents: int
    version: int
    created_at: datetime
    updated_at: datetime


class OrderSummaryOut(View):
    id: int
    customer_id: int
    status: OrderStatus
    item_count: int
    total_cents: int
    created_at: datetime


class OrderPageOut(BaseModel):
    items: list[OrderSummaryOut]
    next_cursor: str | None = None


# --- routes -------------------------------------------------------------------------------------


def router(sessions: async_sessionmaker[AsyncSession]) -> APIRouter:
    async def session() -> AsyncIterator[AsyncSession]:
        async with sessions() as db:
            yield db

    Session = Annotated[AsyncSession, Depends(session)]
    api = APIRouter()

    @api.get("/v1/orders/{order_id}", response_model=OrderOut)
    async def get_order(order_id: int, db: Session) -> Order:
        # Items come in line_no order (the relationship's order_by), as the service shows them.
        loads = [selectinload(Order.customer), selectinload(Order.items).selectinload(OrderItem.product)]
        order = await db.get(Order, order_id, options=loads)
        if order is None:
            raise HTTPException(status_code=404, detail="Order not found")
        return order

    @api.get("/v1/products/{product_id}", response_model=ProductOut)
    async def get_product(product_id: int, db: Session) -> Product:
        product = await db.get(Product, product_id)
        if product is None:
            raise HTTPException(status_code=404, detail="Product not found")
        return product

    @api.get("/v1/orders", response_model=OrderPageOut)
    async def list_orders(
        customer_id: int, db: Session, limit: Annotated[int, Query(ge=1, le=100)] = 20
    ) -> OrderPageOut:
        newest = (
            select(Order)
            .where(Order.customer_id == customer_id)
            .order_by(Order.created_at.desc(), Order.id.desc())
            .limit(limit)
        )
        orders = (await db.scalars(newest)).all()
        return OrderPageOut(items=[OrderSummaryOut.model_validate(order) for order in orders])

    return api


def create_app() -> FastAPI:
    # The libpq URL, ``?host=/socket/dir`` included, with the asyncpg driver named.
    url = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql+asyncpg")
    engine = create_async_engine(url, pool_size=10, max_overflow=0)
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(router(sessions))
    return app
