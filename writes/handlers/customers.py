"""Customers: create one, or upsert a batch in a single statement."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Text, bindparam, func, literal_column, select
from sqlalchemy.dialects.postgresql import ARRAY, insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.dml import ReturningInsert

from shared.dto import CreateCustomer, CustomerView, UpsertCustomers, UpsertResult
from shared.errors import EmailTaken
from shared.http import ENCODER
from writes import events
from writes.db import add_unique
from writes.events import NewEvent
from writes.models import Customer


async def create_customer(command: CreateCustomer, session: AsyncSession) -> CustomerView:
    email = command.email.lower()
    customer = Customer(email=email, name=command.name)
    await add_unique(session, customer, EmailTaken(f"email {email} is already taken"))
    return customer_view(customer)


async def upsert_customers(command: UpsertCustomers, session: AsyncSession) -> UpsertResult:
    """Insert new emails, rename existing ones (one already so named is unchanged: counted in neither);
    a batch that names an email twice keeps the last name (PostgreSQL refuses to update one row twice
    in a statement, so duplicates are folded first)."""
    names = {customer.email.lower(): customer.name for customer in command.customers}
    rows = (await session.execute(_upsert(list(names), list(names.values())))).all()
    await events.append(
        session,
        [
            NewEvent(
                "customer.created" if row.inserted else "customer.updated",
                row.id,
                ENCODER.encode(
                    CustomerView(id=row.id, email=row.email, name=row.name, created_at=row.created_at)
                ).decode(),
            )
            for row in rows
        ],
    )
    inserted = sum(row.inserted for row in rows)
    return UpsertResult(inserted=inserted, updated=len(rows) - inserted)


def _upsert(emails: list[str], names: list[str]) -> ReturningInsert[int, str, str, datetime, bool]:
    # Two array parameters, whatever the batch size: one statement, no bind-parameter limit.
    batch = (
        func.unnest(bindparam("emails", emails, type_=ARRAY(Text)), bindparam("names", names, type_=ARRAY(Text)))
        .table_valued("email", "name")
        .render_derived(name="batch")
    )
    statement = insert(Customer).from_select(["email", "name"], select(batch.c.email, batch.c.name))
    # A known email whose name is already the one given is left alone: not rewritten, not returned, so
    # it is neither counted nor an event (a command appends one per resource it changes).
    # xmax is 0 on a row version no transaction has touched since it was inserted: a fresh insert.
    return statement.on_conflict_do_update(
        index_elements=[Customer.email],
        set_={"name": statement.excluded.name},
        where=Customer.name.is_distinct_from(statement.excluded.name),
    ).returning(
        Customer.id,
        Customer.email,
        Customer.name,
        Customer.created_at,
        literal_column("xmax = 0", Boolean).label("inserted"),
    )


def customer_view(customer: Customer) -> CustomerView:
    return CustomerView(id=customer.id, email=customer.email, name=customer.name, created_at=customer.created_at)
