"""One table of driver failures for both pools: what each of asyncpg's ways of failing means."""

from __future__ import annotations

import asyncpg
import asyncpg.exceptions._base as asyncpg_base
import pytest

from shared.dbfailures import READ, WRITE, Failure, PoolNames, classify, unavailable
from shared.errors import ConnectionLost, DatabaseUnavailable, StatementTimeout


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (asyncpg.SerializationError("could not serialize"), Failure.CONFLICT),
        (asyncpg.DeadlockDetectedError("deadlock"), Failure.CONFLICT),
        (asyncpg.QueryCanceledError("canceling statement due to statement timeout"), Failure.TIMEOUT),
        (asyncpg.TooManyConnectionsError('too many connections for role "x"'), Failure.FULL),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), Failure.LOST),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), Failure.LOST),
        (asyncpg_base.InternalClientError("cannot switch to state 12; another operation is in progress"), Failure.LOST),
        (ConnectionResetError("Connection reset by peer"), Failure.LOST),
        (asyncpg.CannotConnectNowError("the database system is starting up"), Failure.UNAVAILABLE),
        (ConnectionRefusedError("Connect call failed ('10.0.0.1', 5432)"), Failure.UNAVAILABLE),
        (TimeoutError(), Failure.UNAVAILABLE),
        # Bad input or a bug, not the database going away: these stay errors (a 4xx upstream, or a 500).
        (asyncpg_base.DataError("invalid input for query argument $1"), None),
        (asyncpg.UniqueViolationError("duplicate key"), None),
        (asyncpg.UndefinedTableError('relation "orders" does not exist'), None),
        (asyncpg.InterfaceError("cannot perform operation: another operation is in progress"), None),
    ],
)
def test_each_driver_failure_has_one_meaning(error: Exception, expected: Failure | None) -> None:
    assert classify(error) is expected


def test_any_failure_on_a_connection_that_closed_under_it_is_a_lost_connection() -> None:
    closed = asyncpg.InterfaceError("connection is closed")
    assert classify(closed) is None
    assert classify(closed, connection_closed=True) is Failure.LOST


def test_a_wrapped_driver_error_is_classified_by_what_it_wraps() -> None:
    class Wrapper(Exception):  # what SQLAlchemy's DBAPIError does: the driver error in .orig
        def __init__(self, orig: BaseException) -> None:
            self.orig = orig

    adapted = RuntimeError("the adapter's error")
    adapted.__cause__ = asyncpg.AdminShutdownError("terminating connection")
    assert classify(Wrapper(adapted)) is Failure.LOST


@pytest.mark.parametrize("names", [READ, WRITE])
def test_a_503_names_the_pool_and_the_setting_and_never_the_drivers_words(names: PoolNames) -> None:
    driver = asyncpg.TooManyConnectionsError('too many connections for role "secret_role" on host db.internal')
    cases = {
        Failure.TIMEOUT: (StatementTimeout, names.statement_timeout),
        Failure.FULL: (DatabaseUnavailable, names.size),
        Failure.LOST: (ConnectionLost, names.url),
        Failure.UNAVAILABLE: (DatabaseUnavailable, names.url),
    }
    for failure, (kind, setting) in cases.items():
        error = unavailable(failure, names, driver)
        assert isinstance(error, kind)
        assert str(error).startswith(names.pool)
        assert setting in str(error)
        assert "secret_role" not in str(error)
        assert "db.internal" not in str(error)
