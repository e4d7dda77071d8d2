"""One async function per command: ``(command, session) -> view``. The transaction is opened and
committed in one place, ``WritePool.run``, around the idempotency key and the handler together."""

from writes.handlers.customers import create_customer, upsert_customers
from writes.handlers.imports import OrderImport, import_orders
from writes.handlers.orders import cancel_order, pay_order, place_order, ship_order
from writes.handlers.products import create_product, reprice_product, restock_product

__all__ = [
    "OrderImport",
    "cancel_order",
    "create_customer",
    "create_product",
    "import_orders",
    "pay_order",
    "place_order",
    "reprice_product",
    "restock_product",
    "ship_order",
    "upsert_customers",
]
