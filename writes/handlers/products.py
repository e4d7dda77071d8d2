"""Products: create, restock, reprice. Every change bumps ``version``, the product's ETag."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.dto import MAX_STOCK, CreateProduct, ProductView, Reprice, Restock
from shared.errors import NotFound, SkuTaken, StockLimit
from writes.db import add_unique
from writes.models import Product


async def create_product(command: CreateProduct, session: AsyncSession) -> ProductView:
    product = Product(sku=command.sku, name=command.name, price_cents=command.price_cents, stock=command.stock)
    await add_unique(session, product, SkuTaken(f"sku {command.sku} is already taken"))
    return product_view(product)


async def restock_product(product_id: int, command: Restock, session: AsyncSession) -> ProductView:
    # The limit is checked in the UPDATE itself, so concurrent restocks cannot pass it together.
    within = Product.stock <= MAX_STOCK - command.quantity
    try:
        return await _change(session, product_id, within, stock=Product.stock + command.quantity)
    except NotFound:
        stock = await session.scalar(select(Product.stock).where(Product.id == product_id))
        if stock is None:
            raise
        raise StockLimit(
            f"product {product_id} has {stock} in stock; a restock of {command.quantity} would pass "
            f"{MAX_STOCK}, the most a product holds"
        ) from None


async def reprice_product(product_id: int, command: Reprice, session: AsyncSession) -> ProductView:
    # Orders keep the unit price they captured; only new orders see the new one.
    return await _change(session, product_id, price_cents=command.price_cents)


async def _change(session: AsyncSession, product_id: int, *conditions: Any, **values: Any) -> ProductView:
    """One UPDATE ... RETURNING: the change, the version bump and the row the view is built from.
    No row (an unknown product, or ``conditions`` false) is a 404."""
    statement = (
        update(Product)
        .where(Product.id == product_id, *conditions)
        .values(**values, version=Product.version + 1, updated_at=func.now())
        .returning(Product)
    )
    product = (await session.scalars(statement)).one_or_none()
    if product is None:
        raise NotFound(f"product {product_id} not found")
    return product_view(product)


def product_view(product: Product) -> ProductView:
    return ProductView(
        id=product.id,
        sku=product.sku,
        name=product.name,
        price_cents=product.price_cents,
        stock=product.stock,
        version=product.version,
        created_at=product.created_at,
        updated_at=product.updated_at,
    )
