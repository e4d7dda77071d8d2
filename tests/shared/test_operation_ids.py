"""Every operation of /openapi.json has an operationId, written in shared.openapi.OPERATION_IDS
(the names generated clients call), unique, and every name written there names a served route."""

from __future__ import annotations

import pytest
from starlette.routing import Route

from service.reference.http import served_openapi
from shared.config import Settings
from shared.openapi import OPERATION_IDS, build_openapi, operation


def test_every_operation_has_a_unique_written_operation_id() -> None:
    document = served_openapi(Settings(read_api_open=True))
    found = {
        (method, path): op.get("operationId") for path, item in document["paths"].items() for method, op in item.items()
    }
    assert None not in found.values(), [key for key, name in found.items() if name is None]
    assert len(set(found.values())) == len(found), "an operationId names two operations"
    # No name is left over from a route that went: the table is exactly the operations served.
    assert found == OPERATION_IDS
    assert document["paths"]["/v1/orders"]["post"]["operationId"] == "placeOrder"
    assert document["paths"]["/v1/orders/{id}"]["get"]["operationId"] == "getOrder"
    assert document["paths"]["/v1/orders"]["get"]["operationId"] == "listOrders"


def test_an_operation_without_a_written_id_stops_the_build_naming_it() -> None:
    @operation("Unnamed", tag="operations", responses={200: None})
    async def unnamed() -> None: ...

    with pytest.raises(LookupError, match=r"GET /v1/unnamed has no operationId"):
        build_openapi([Route("/v1/unnamed", unnamed, methods=["GET"])], title="t", version="1")
