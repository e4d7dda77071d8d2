"""Schemathesis against the served app: /openapi.json tells the truth (docs/http.md § Operations).

The app is served on a real socket over this run's database, with a few rows made through the
commands first so that reads and transitions have something to find. Then the ``st`` command line
runs every check and every phase, stateful included: once with a token that opens everything
(READ_API_TOKENS set, so queries are secured too), and once without any token (READ_API_OPEN). The
configuration is schemathesis.toml: hooks, and the statuses the contract adds to a check's
expectations. Bounded: a fixed number of examples per operation, a seed, and a deadline per run.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import httpx
import msgspec
from starlette.applications import Starlette

from service.app import create_app
from shared.config import Settings
from tests.support import WRITE_TOKEN, serving
from tests.writes.support import new_customer, new_order, new_product

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "schemathesis.toml"
ST = Path(sys.executable).parent / "st"
BOUNDS = [
    "--max-examples=100",
    "--seed=20261123",
    "--workers=1",  # one worker keeps a seeded run repeatable
    "--max-response-time=10",  # a hang is a failure (every pool wait is bounded far below this)
    "--request-timeout=15",
]
DEADLINE = 240.0  # seconds for one run; the runs take about a minute each on 2 cores


async def test_schemathesis_finds_nothing_with_a_token_and_closed_queries(settings: Settings, tmp_path: Path) -> None:
    # The one token opens commands and queries alike, so every operation is secured. OpenAPI-aware
    # auth: Schemathesis knows the token is the bearer scheme, so it can still leave it out to check
    # that each secured operation refuses a request without it.
    app = create_app(msgspec.structs.replace(settings, read_api_tokens=(WRITE_TOKEN,), read_api_open=False))
    config = tmp_path / "schemathesis.toml"
    config.write_text(f'{CONFIG.read_text()}\n[auth.openapi.bearer]\nbearer = "{WRITE_TOKEN}"\n')
    async with serving(app) as url:
        await make_a_little_data(url)
        await assert_schemathesis_passes(url, config)


async def test_schemathesis_finds_nothing_without_a_token_and_open_queries(app: Starlette) -> None:
    async with serving(app) as url:
        await make_a_little_data(url)
        await assert_schemathesis_passes(url, CONFIG)


async def make_a_little_data(url: str) -> None:
    async with httpx.AsyncClient(base_url=url) as client:
        customer = await new_customer(client)
        product = await new_product(client, stock=1_000_000)
        for _ in range(3):
            await new_order(client, customer, (product, 1))


async def assert_schemathesis_passes(url: str, config: Path) -> None:
    command = [str(ST), f"--config-file={config}", "run", f"{url}/openapi.json", "--checks=all", *BOUNDS, "--no-color"]
    # The app is served by this event loop, so the run must not block it: an asyncio subprocess.
    process = await asyncio.create_subprocess_exec(
        *command, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        async with asyncio.timeout(DEADLINE):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        output, _ = await process.communicate()
        raise AssertionError(f"schemathesis ran past {DEADLINE} s:\n{output.decode()}") from None
    report = output.decode()
    assert process.returncode == 0, report
    assert "✅ Stateful" in report, report  # the stateful phase ran, and found nothing
