"""A query's Consistency-Token is a token a command issued, or a 400: in a process of any role, with or
without replicas (tests/reads/test_replicas.py has those), on every query route, however the header is
sent. A malformed one never goes unread."""

from __future__ import annotations

import pytest

from service.app import SIDES_FOR_ROLE, ServeRole, create_app
from shared.config import Settings
from shared.consistency import HEADER, encode_token
from tests.support import running_client
from tests.writes.support import assert_problem

QUERIES = [
    "/v1/customers/1",
    "/v1/products/1",
    "/v1/orders/1",
    "/v1/products",
    "/v1/orders",
    "/v1/stats/revenue/daily",
    "/v1/stats/products/top",
    "/v1/exports/orders",
]
ISSUED = encode_token(1)
MALFORMED = {
    "zero": [(HEADER, "0")],
    "empty": [(HEADER, "")],
    "not hex": [(HEADER, ISSUED[:-1] + "g")],
    "a 0 after an issued token": [(HEADER, ISSUED), (HEADER, "0")],
    "a 0 before an issued token": [(HEADER, "0"), (HEADER, ISSUED)],
}


@pytest.mark.parametrize("role", ["all", "reads"])
@pytest.mark.parametrize("headers", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_consistency_token_is_a_400_on_every_query(
    settings: Settings, role: ServeRole, headers: list[tuple[str, str]]
) -> None:
    async with running_client(create_app(settings, SIDES_FOR_ROLE[role])) as client:
        for path in QUERIES:
            for method in ("GET", "HEAD"):
                response = await client.request(method, path, headers=headers)
                assert response.status_code == 400, (method, path, response.text)
                if method == "GET":
                    assert_problem(response, 400, HEADER)
                    assert response.json()["type"] == "/problems/bad-consistency-token"


async def test_an_issued_token_is_accepted_on_every_query(settings: Settings) -> None:
    async with running_client(create_app(settings)) as client:
        for path in QUERIES:
            response = await client.get(path, headers={HEADER: ISSUED})
            assert response.status_code in (200, 404), (path, response.text)
