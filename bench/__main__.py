"""``python -m bench``, from a checkout: the benchmark (a dev tool; the service never imports it)."""

from __future__ import annotations

from pathlib import Path

import click

from bench.core import SCENARIOS
from bench.run import run_benchmark


@click.command()
@click.option("--smoke", is_flag=True, help="Seconds-long, on tiny data: checks that every scenario measures (CI).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Where the report (README.md), its charts and results.json go.",
)
@click.option("--only", multiple=True, type=click.Choice(SCENARIOS), help="Run just these scenarios (repeatable).")
def main(smoke: bool, out: Path, only: tuple[str, ...]) -> None:
    """Benchmark the service against an async-ORM twin, a bare floor and a ceiling, from scratch (bench/)."""
    try:
        report = run_benchmark(out, smoke=smoke, only=only, say=click.echo)
    except RuntimeError as exc:  # wrk or py-spy missing, a server that would not start
        raise click.ClickException(str(exc)) from None
    click.echo(f"report: {report}")


main()
