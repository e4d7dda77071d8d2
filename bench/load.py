"""Command load: ``clients`` concurrent clients, each on its own keep-alive connection, posting
orders in a closed loop for a bounded time. wrk cannot tell an accepted request's latency from a
rejected one's, so commands are driven from here, with every answer's status and time recorded."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

import httpx

from bench.core import Measurement, quantile_ms

ACCEPTED = frozenset({200, 201, 409})  # 409: the domain said no (out of stock), an answer all the same
REJECTED = 503


@dataclass
class Answers:
    """Every answer of one load run: (status, seconds, seconds before the request left) in the order
    they arrived."""

    seconds: float = 0.0
    answers: list[tuple[int, float, float]] = field(default_factory=list)

    def latencies(self, statuses: frozenset[int]) -> list[float]:
        return sorted(took for status, took, _ in self.answers if status in statuses)

    def before_sending(self, statuses: frozenset[int]) -> list[float]:
        """How long each answer's request took to leave the load generator (its own loop's queue:
        clients refused together come back together, and one loop sends their requests in turn)."""
        return sorted(waited for status, _, waited in self.answers if status in statuses)

    def after_sending(self, statuses: frozenset[int]) -> list[float]:
        """From each request's last byte sent to its whole answer read."""
        return sorted(took - waited for status, took, waited in self.answers if status in statuses)

    def count(self, statuses: frozenset[int]) -> int:
        return sum(status in statuses for status, _, _ in self.answers)

    def created(self) -> int:
        return sum(status == 201 for status, _, _ in self.answers)

    def errors(self) -> int:
        return sum(status not in ACCEPTED and status != REJECTED for status, _, _ in self.answers)


OrderBody = Callable[[random.Random], dict[str, object]]


def random_order(customers: int, products: int) -> OrderBody:
    def body(rng: random.Random) -> dict[str, object]:
        product = rng.randint(1, products)
        return {"customer_id": rng.randint(1, customers), "items": [{"product_id": product, "quantity": 1}]}

    return body


@dataclass(frozen=True)
class OrderLoad:
    token: str
    body: OrderBody
    keyed: bool
    honour_retry_after: bool

    async def client(self, http: httpx.AsyncClient, number: int, deadline: float, answers: Answers) -> None:
        rng = random.Random(number)
        headers = {"Authorization": f"Bearer {self.token}"}
        sent = [0.0]  # when the request's last byte left (httpx's trace), else when it was begun

        async def trace(event: str, info: dict[str, object]) -> None:
            if event == "http11.send_request_body.complete":
                sent[0] = time.perf_counter()

        while time.monotonic() < deadline:
            if self.keyed:
                headers["Idempotency-Key"] = uuid.uuid4().hex
            begun = sent[0] = time.perf_counter()
            try:
                response = await http.post(
                    "/v1/orders", json=self.body(rng), headers=headers, extensions={"trace": trace}
                )
            except httpx.TransportError:
                answers.answers.append((0, time.perf_counter() - begun, sent[0] - begun))
                continue
            answers.answers.append((response.status_code, time.perf_counter() - begun, sent[0] - begun))
            if response.status_code == REJECTED and self.honour_retry_after:
                pause = float(response.headers.get("retry-after", "1"))
                await asyncio.sleep(min(pause, deadline - time.monotonic()))


async def post_orders(
    url: str, token: str, body: OrderBody, *, clients: int, seconds: float, keyed: bool, honour_retry_after: bool = True
) -> Answers:
    """Closed-loop ``POST /v1/orders`` from ``clients`` clients for ``seconds``; a rejected client
    waits what ``Retry-After`` says (as the contract asks) unless ``honour_retry_after`` is False.

    The clients are made and connected before the clock starts: making 200 httpx clients blocks
    this loop for seconds (each builds a TLS context), which would count against the server."""
    load, answers = OrderLoad(token, body, keyed, honour_retry_after), Answers()
    tls = ssl.create_default_context()  # plain HTTP here; one context shared instead of one a client
    async with AsyncExitStack() as stack:
        https = [
            await stack.enter_async_context(
                httpx.AsyncClient(base_url=url, timeout=30, verify=tls, limits=httpx.Limits(max_connections=1))
            )
            for _ in range(clients)
        ]
        await asyncio.gather(*(http.get("/healthz") for http in https))
        started, deadline = time.perf_counter(), time.monotonic() + seconds
        await asyncio.gather(*(load.client(http, number, deadline, answers) for number, http in enumerate(https)))
        answers.seconds = time.perf_counter() - started
    return answers


def accepted(scenario: str, case: str, contender: str, runs: list[Answers]) -> Measurement:
    """The accepted commands of ``runs`` pooled: their rate over the runs' time, and their latency."""
    latencies = sorted(t for answers in runs for t in answers.latencies(ACCEPTED))
    return Measurement(
        scenario=scenario,
        case=case,
        contender=contender,
        rate=len(latencies) / sum(answers.seconds for answers in runs),
        p50_ms=quantile_ms(latencies, 0.5),
        p99_ms=quantile_ms(latencies, 0.99),
        count=len(latencies),
        errors=sum(answers.errors() for answers in runs),
    )
