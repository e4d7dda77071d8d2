"""Products: create, restock, reprice. Every change bumps ``version``, the product's ETag."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, update
from sqlalchemy.ext.asyncio import AsyncSession

from shared.dto import CreateProduct, ProductView, Reprice, Restock
from shared.errors import NotFound, SkuTaken
from writes.db import add_unique
from writes.models import Product


async def create_product(command: CreateProduct, session: AsyncSession) -> ProductView:
    product = Product(sku=command.sku, name=command.name, price_cents=command.price_cents, stock=command.stock)
    await add_unique(session, product, SkuTaken(f"sku {command.sku} is already taken"))
    return product_view(product)


async def restock_product(product_id: int, command: Restock, session: AsyncSession) -> ProductView:
    return await _change(session, product_id, stock=Product.stock + command.quantity)


async def reprice_product(product_id: int, command: Reprice, session: AsyncSession) -> ProductView:
    # Orders keep the unit price they captured; only new orders see the new one.
    return await _change(session, product_id, price_cents=command.price_cents)


async def _change(session: AsyncSession, product_id: int, **values: Any) -> ProductView:
    """One UPDATE ... RETURNING: the change, the version bump and the row the view is built from."""
    statement = (
        update(Product)
        .where(Product.id == product_id)
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
