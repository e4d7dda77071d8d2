from __future__ import annotations

import logging

import pytest

from shared.config import ConfigError, Settings, asyncpg_dsn


def test_defaults_match_the_configuration_table() -> None:
    settings = Settings.from_env({})
    assert (settings.write_pool_size, settings.write_pool_max_overflow, settings.write_pool_timeout) == (
        5,
        0,
        2.0,
    )
    assert (settings.write_pool_recycle, settings.write_pool_pre_ping) == (1800, True)
    assert settings.write_statement_timeout_ms == 5000
    assert (settings.read_pool_min_size, settings.read_pool_max_size, settings.read_pool_acquire_timeout) == (
        2,
        10,
        1.0,
    )
    assert settings.read_pool_max_inactive_lifetime == 300
    assert (settings.read_replica_max_lag_ms, settings.read_consistency_wait_ms) == (5000, 50)
    assert settings.read_primary_pool_max_size == 3
    assert (settings.read_statement_cache_size, settings.read_statement_timeout_ms) == (256, 2000)
    assert settings.pgbouncer is False
    assert settings.write_api_tokens == settings.read_api_tokens == ()
    assert settings.read_api_open is False
    assert settings.idempotency_ttl == 86_400
    assert (settings.max_body_bytes, settings.max_import_bytes) == (1024 * 1024, 64 * 1024 * 1024)
    assert settings.is_embedded


def test_values_are_typed_from_strings() -> None:
    settings = Settings.from_env(
        {
            "WRITE_POOL_SIZE": "7",
            "WRITE_POOL_PRE_PING": "false",
            "READ_POOL_ACQUIRE_TIMEOUT": "0.25",
            "PGBOUNCER": "true",
            "WRITE_API_TOKENS": " a , b,,",
        }
    )
    assert settings.write_pool_size == 7
    assert settings.write_pool_pre_ping is False
    assert settings.read_pool_acquire_timeout == 0.25
    assert settings.pgbouncer is True
    assert settings.write_api_tokens == ("a", "b")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("WRITE_POOL_SIZE", "abc"),
        ("WRITE_POOL_SIZE", "0"),
        ("WRITE_POOL_TIMEOUT", "-1"),
        ("READ_POOL_MAX_SIZE", "1.5"),
        ("PGBOUNCER", "maybe"),
        ("IDEMPOTENCY_TTL", "0"),
        ("DATABASE_URL", "mysql://u:p@h/db"),
        ("DATABASE_URL", "postgresql://u:p@h:5432"),
        ("DATABASE_URL", "postgresql://u:p@127.0.0.1:abc/db"),
        ("DATABASE_URL", "postgresql://[bad/db"),
        ("DATABASE_URL", "postgresql://u:p@h:99999/db"),
        ("IDEMPOTENCY_TTL", "99999999999999999999"),
        ("WRITE_STATEMENT_TIMEOUT_MS", "99999999999"),
        ("READ_STATEMENT_TIMEOUT_MS", "2147483648"),
        # "Nothing waits unbounded": inf, 1e300 or a limit of 1e20 would mean none at all.
        ("WRITE_POOL_TIMEOUT", "inf"),
        ("READ_POOL_ACQUIRE_TIMEOUT", "1e300"),
        ("READ_EXPORT_WAIT", "1e-300"),
        ("WRITE_POOL_MAX_WAITING", "100000000000000000000"),
        ("READ_POOL_MAX_WAITING", "1000001"),
        ("READ_STATEMENT_CACHE_SIZE", "100000000000000000000"),
        ("MAX_BODY_BYTES", "100000000000000000000"),
        ("WRITE_POOL_RECYCLE", "100000000000000000000"),
        ("READ_POOL_MAX_INACTIVE_LIFETIME", "inf"),
    ],
)
def test_an_invalid_value_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        Settings.from_env({variable: value})


def test_read_pool_floor_above_ceiling_is_refused() -> None:
    with pytest.raises(ConfigError, match="READ_POOL_MIN_SIZE"):
        Settings.from_env({"READ_POOL_MIN_SIZE": "11", "READ_POOL_MAX_SIZE": "10"})


def test_one_side_url_without_the_other_is_refused() -> None:
    with pytest.raises(ConfigError, match="READ_DATABASE_URL"):
        Settings.from_env({"WRITE_DATABASE_URL": "postgresql://u@h/db"})


def test_database_url_is_derived_for_each_driver() -> None:
    settings = Settings.from_env({"DATABASE_URL": "postgres://u:p@db.example:5433/orders?sslmode=require"})
    assert asyncpg_dsn(settings.write_url) == "postgresql://u:p@db.example:5433/orders?sslmode=require"
    assert settings.read_dsn == "postgresql://u:p@db.example:5433/orders?sslmode=require"
    assert not settings.is_embedded


def test_per_side_urls_override_database_url() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@primary/orders",
            "READ_DATABASE_URL": "postgresql://u@replica/orders",
        }
    )
    assert settings.write_url == "postgresql://u@primary/orders"
    assert settings.read_url == "postgresql://u@replica/orders"
    assert settings.read_host_urls == ["postgresql://u@replica/orders"]


def test_a_multi_host_read_url_is_one_url_per_replica_in_its_order() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@primary/orders",
            "READ_DATABASE_URL": "postgresql://u:p%40ss@replica1:5432,replica2,10.0.0.3:5434/orders?sslmode=require",
        }
    )
    assert settings.read_host_urls == [
        "postgresql://u:p%40ss@replica1:5432/orders?sslmode=require",
        "postgresql://u:p%40ss@replica2/orders?sslmode=require",
        "postgresql://u:p%40ss@10.0.0.3:5434/orders?sslmode=require",
    ]
    assert Settings.from_env({"DATABASE_URL": "postgresql://u@primary/orders"}).read_host_urls == []


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u@replica1:5432,replica2:abc/orders",
        "postgresql://u@replica1:5432,replica2:99999/orders",
        "postgresql://u@replica1,replica2",
        "mysql://u@replica1,replica2/orders",
    ],
)
def test_an_invalid_multi_host_read_url_is_refused_naming_read_database_url(url: str) -> None:
    with pytest.raises(ConfigError, match="READ_DATABASE_URL"):
        Settings.from_env({"DATABASE_URL": "postgresql://u@primary/orders", "READ_DATABASE_URL": url})


def test_unknown_pool_variables_are_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        Settings.from_env({"WRITE_POOL_SIZ": "3", "READ_POOL_MAX": "4", "HOME": "/root"})
    assert "WRITE_POOL_SIZ" in caplog.text
    assert "READ_POOL_MAX" in caplog.text
    assert "HOME" not in caplog.text


def test_read_api_open_is_a_setting_of_its_own(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        settings = Settings.from_env({"DATABASE_URL": "postgresql://u@primary/orders", "READ_API_OPEN": "true"})
    assert settings.read_api_open is True
    assert "READ_API_OPEN" not in caplog.text  # known, not warned about as a typo


def test_read_api_open_and_read_api_tokens_together_are_refused_naming_both() -> None:
    with pytest.raises(ConfigError, match=r"READ_API_TOKENS.*READ_API_OPEN"):
        Settings.from_env({"READ_API_TOKENS": "reader", "READ_API_OPEN": "true"})


def test_a_choice_refused_lists_the_values_it_takes() -> None:
    with pytest.raises(ConfigError, match=r"ACCESS_LOG: .*'JSON' \(one of: json, off, text\)"):
        Settings.from_env({"ACCESS_LOG": "JSON"})
