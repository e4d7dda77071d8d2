"""Product by id, and product search paged by id."""

from __future__ import annotations

import functools
from collections.abc import Awaitable

from reads.cursor import decode_cursor, page_of
from reads.db import Reader
from reads.params import ProductSearch
from reads.queries import instant
from shared.dto import Id, Page, ProductView

PRODUCT_COLUMNS = (
    f"id, sku, name, price_cents, stock, version, {instant('created_at')} AS created_at,"
    f" {instant('updated_at')} AS updated_at"
)

PRODUCT_BY_ID = f"""
    SELECT to_json(p)::text
    FROM (
        SELECT {PRODUCT_COLUMNS}
        FROM products
        WHERE id = $1
    ) p
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


def product_by_id(reader: Reader, product_id: int) -> Awaitable[ProductView | None]:
    # The statement's coroutine itself, not one awaiting it: a frame less in every read's chain.
    return reader.find(PRODUCT_BY_ID, ProductView, product_id)


# $1 is a LIKE pattern with its wildcards escaped (see like_pattern); keyset on the primary key. A
# text per combination of $1 and $2 given, as for the order list (see reads.queries.orders.ORDER_FILTERS).
MATCHES = r"(name ILIKE $1::text ESCAPE '\' OR sku ILIKE $1::text ESCAPE '\')"


@functools.cache
def product_search_sql(matching: bool, after: bool) -> str:
    return f"""
    SELECT coalesce(json_agg(p ORDER BY p.id), '[]')::text
    FROM (
        SELECT {PRODUCT_COLUMNS}
        FROM products
        WHERE {MATCHES if matching else "$1::text IS NULL"}
          AND {"id > $2::bigint" if after else "$2::bigint IS NULL"}
        ORDER BY id
        LIMIT $3
    ) p
"""  # noqa: S608 - composed of constants only; every value is a bound parameter


async def product_search(reader: Reader, params: ProductSearch) -> Page[ProductView]:
    bound_to = ("products", params.q)
    after = None if params.cursor is None else decode_cursor(params.cursor, Id, bound_to=bound_to)
    pattern = None if params.q is None else like_pattern(params.q)
    sql = product_search_sql(pattern is not None, after is not None)
    # A pattern is replanned: a rare one is served by the trigram indexes, a common one by walking
    # the primary key until the page is full, and a generic plan cannot tell them apart.
    rows = await reader.value(sql, list[ProductView], pattern, after, params.limit + 1, replan=pattern is not None)
    return page_of(rows, params.limit, lambda product: product.id, bound_to=bound_to)


def like_pattern(text: str) -> str:
    """A pattern matching ``text`` anywhere, with LIKE's ``%``, ``_`` and ``\\`` taken literally."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
