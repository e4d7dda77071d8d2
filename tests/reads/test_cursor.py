"""The keyset cursor: round trip, and every kind of tampering is a BadCursor."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from reads.cursor import decode_cursor, encode_cursor
from shared.errors import BadCursor

POSITION = (datetime(2026, 11, 23, 10, 15, 0, 123456, tzinfo=UTC), 42)
FILTERS = ("orders", 7, "paid", None, None)


def test_a_cursor_round_trips_its_position_to_the_microsecond() -> None:
    cursor = encode_cursor(POSITION, bound_to=FILTERS)

    assert decode_cursor(cursor, tuple[datetime, int], bound_to=FILTERS) == POSITION
    assert cursor.isascii()
    assert "=" not in cursor


def test_every_single_bit_flip_is_a_bad_cursor() -> None:
    raw = bytearray(base64.urlsafe_b64decode(encode_cursor(POSITION, bound_to=FILTERS) + "=="))

    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        cursor = base64.urlsafe_b64encode(flipped).decode()
        with pytest.raises(BadCursor):
            decode_cursor(cursor, tuple[datetime, int], bound_to=FILTERS)


def test_a_cursor_from_other_filters_is_a_bad_cursor() -> None:
    cursor = encode_cursor(POSITION, bound_to=FILTERS)

    with pytest.raises(BadCursor, match="other filters"):
        decode_cursor(cursor, tuple[datetime, int], bound_to=("orders", 7, "shipped", None, None))


def test_a_sealed_cursor_of_another_shape_is_a_bad_cursor() -> None:
    cursor = encode_cursor(["not", "a", "position"], bound_to=FILTERS)

    with pytest.raises(BadCursor, match="does not fit"):
        decode_cursor(cursor, tuple[datetime, int], bound_to=FILTERS)


@pytest.mark.parametrize("garbage", ["", "x", "!!!!", "é", "A" * 500, "a=b", "..", "%00"])
def test_garbage_is_a_bad_cursor(garbage: str) -> None:
    with pytest.raises(BadCursor):
        decode_cursor(garbage, tuple[datetime, int], bound_to=FILTERS)
