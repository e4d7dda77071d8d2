"""The report: markdown with PNG charts (matplotlib), the machine, the versions and every setting,
and the targets of issues 10, 12 and 20 and of the event feed checked against the measurements."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display here or in CI
import matplotlib.pyplot as plt

from bench.core import Measurement
from bench.profile import Profile

PACKAGES = ("starlette", "uvicorn", "sqlalchemy", "asyncpg", "msgspec", "fastapi", "pydantic", "psycopg", "py-spy")


@dataclass(frozen=True)
class Target:
    name: str
    wanted: str
    measured: str
    met: bool


def find(measurements: list[Measurement], scenario: str, case: str, contender: str) -> Measurement:
    for m in measurements:
        if m.scenario == scenario and m.case == case and m.contender == contender:
            return m
    raise LookupError(f"no measurement for {scenario} / {case} / {contender}")


def ratio_target(name: str, wanted: float, numerator: float, denominator: float, unit: str = "×") -> Target:
    value = numerator / denominator if denominator else 0.0
    return Target(name, f"≥ {wanted:g}{unit}", f"{value:.2f}{unit}", value >= wanted)


def limit_target(name: str, limit: float, value: float, unit: str) -> Target:
    return Target(name, f"< {limit:g} {unit}", f"{value:.1f} {unit}", value < limit)


def targets(ms: list[Measurement], pool_size: int) -> list[Target]:
    """The targets whose scenarios ran: issue 10's, issue 12's, issue 20's and the event feed's."""
    present = {m.scenario for m in ms}
    found = []
    if {"http-reads", "writes", "bulk", "isolation"} <= present:
        found += speed_targets(ms, pool_size)
    if "stats" in present:
        found += read_model_targets(ms)
    if "write-floor" in present:
        found += write_floor_targets(ms)
    if "events" in present:
        found += outbox_targets(ms)
    return found


def outbox_targets(ms: list[Measurement]) -> list[Target]:
    """The event feed's: appending a command's event costs place order and pay at most 10 % of their
    throughput. In the service (against itself with appending taken out), and on the write floor
    (the service's statement in the floor's transaction: the database's side alone). Beside each,
    the same cost in CPU a command, the server's and PostgreSQL's together: on a machine the load
    saturates, what the throughput pays for."""
    found = []
    for command, case in (("place", "POST /v1/orders · 8 clients"), ("pay", "POST /v1/orders/{id}/pay · 8 clients")):
        for with_it, without in (("service", "service without its outbox"), ("write floor + outbox", "write floor")):
            measured, base = find(ms, "events", case, with_it), find(ms, "events", case, without)
            ratio = measured.rate / base.rate if base.rate else 0.0
            found.append(
                Target(
                    f"outbox cost on {command} ({with_it} ÷ {without})",
                    "≤ 10 %",
                    f"{(1 - ratio) * 100:.1f} % ({ratio:.2f}×)",
                    ratio >= 0.90,
                )
            )
            spent, spent_without = command_cpu_ms(measured), command_cpu_ms(base)
            cost = spent / spent_without - 1 if spent_without else 0.0
            found.append(
                Target(
                    f"outbox cost on {command}, CPU a command, server + PostgreSQL ({with_it} ÷ {without})",
                    "≤ 10 %",
                    f"{cost * 100:.1f} % ({spent:.2f} against {spent_without:.2f} ms)",
                    spent_without > 0 and cost <= 0.10,
                )
            )
    return found


def command_cpu_ms(m: Measurement) -> float:
    """The CPU a command cost its server and PostgreSQL together (``bench.scenarios.write_floor``)."""
    return m.extra.get("cpu_ms_per_command", 0.0) + m.extra.get("database_cpu_ms_per_command", 0.0)


def write_floor_targets(ms: list[Measurement]) -> list[Target]:
    """Issue 20's: the service's place order and pay, each at least half the write floor's rate."""
    found = []
    for command, case in (
        ("place order", "POST /v1/orders · 8 clients"),
        ("pay", "POST /v1/orders/{id}/pay · 8 clients"),
    ):
        service = find(ms, "write-floor", case, "service").rate
        found.append(
            ratio_target(f"{command}: service ÷ write floor", 0.5, service, find(ms, "write-floor", case, "floor").rate)
        )
    return found


STATS_ENDPOINTS = ("/v1/stats/revenue/daily", "/v1/stats/products/top", "/v1/customers/1")


def read_model_targets(ms: list[Measurement]) -> list[Target]:
    """Issue 12's: each stats endpoint's p99 (at 4 connections) under 5 ms at both sizes and flat
    between them (p50 at the larger size at most 1.5x the smaller's), and the read models adding
    at most 10 % to a place-order (its in-process rate with them against without)."""
    found: list[Target] = []
    for endpoint in STATS_ENDPOINTS:
        runs = [
            m
            for m in ms
            if m.scenario == "stats" and m.case.startswith(f"GET {endpoint} · ") and m.case.endswith(" 4 connections")
        ]
        found += [limit_target(f"{m.case}: p99", 5, m.p99_ms, "ms") for m in runs]
        if len(runs) == 2:
            growth = runs[1].p50_ms / runs[0].p50_ms if runs[0].p50_ms else 0.0
            found.append(Target(f"{endpoint}: p50 as the orders grow", "≤ 1.5×", f"{growth:.2f}×", 0 < growth <= 1.5))
    places = {m.contender: m.rate for m in ms if m.scenario == "stats" and m.case.startswith("place order")}
    if len(places) == 2:
        cost = 1 - places["with read models"] / places["without (record skipped)"]
        found.append(
            Target("read models: cost in place-order throughput", "≤ 10 %", f"{cost * 100:.1f} %", cost <= 0.10)
        )
    return found


def speed_targets(ms: list[Measurement], pool_size: int) -> list[Target]:
    """Issue 10's targets, from the measurements (1 worker for the HTTP reads)."""
    found: list[Target] = []

    def reads(path: str, twin: float) -> None:
        case = f"GET {path} · 1 worker"
        service = find(ms, "http-reads", case, "service").rate
        found.append(
            ratio_target(f"{path}: service ÷ async-ORM twin", twin, service, find(ms, "http-reads", case, "twin").rate)
        )
        found.append(
            ratio_target(f"{path}: service ÷ bare floor", 1.0, service, find(ms, "http-reads", case, "floor").rate)
        )

    reads("/v1/orders/{id}", 10)
    reads("/v1/products/{id}", 5)
    plain, keyed = (find(ms, "writes", label, f"{pool_size} clients").rate for label in ("no key", "Idempotency-Key"))
    found.append(
        Target(
            "Idempotency-Key: cost in write throughput",
            "≤ 15 %",
            f"{(1 - keyed / plain) * 100:.1f} %",
            keyed >= 0.85 * plain,
        )
    )
    bulk = {m.contender: m.rate for m in ms if m.scenario == "bulk"}
    found.append(ratio_target("import ÷ ORM add_all", 10, bulk["import command (COPY)"], bulk["ORM add_all"]))
    found.append(ratio_target("import ÷ bare COPY", 0.8, bulk["import command (COPY)"], bulk["bare asyncpg COPY"]))
    crowd = find(ms, "writes", "no key", "200 clients")
    found.append(limit_target("200 writers: accepted p99", 250, crowd.p99_ms, "ms"))
    rejected = limit_target("200 writers: rejected p99", 20, crowd.extra.get("rejected_p99_ms", 0.0), "ms")
    # What the clients measured includes the load generator's own queue before a request left it.
    unsent, sent = (crowd.extra.get(f"rejected_{part}_sending_p99_ms", 0.0) for part in ("before", "after"))
    split = f"before the request left the load generator {unsent:.1f} ms, after {sent:.1f} ms"
    found.append(replace(rejected, measured=f"{rejected.measured} (p99s: {split})"))
    inside = crowd.extra.get("rejected_in_server_p99_ms", 0.0)
    found.append(limit_target("200 writers: rejected p99 inside the server", 5, inside, "ms"))
    found.append(
        ratio_target(
            "200 writers: accepted throughput ÷ at pool concurrency",
            0.9,
            crowd.rate,
            find(ms, "writes", "no key", f"{pool_size} clients").rate,
        )
    )
    # Issue 10's bounds, and issue 20's for one process (where the writes share the reads' event loop).
    for setup, bound in (("one process", 1.5), ("one process", 3.0), ("--role split", 1.2)):
        alone = find(ms, "isolation", "reads alone", setup).p99_ms
        loaded = find(ms, "isolation", "reads under write saturation", setup).p99_ms
        value = loaded / alone if alone else 0.0
        found.append(
            Target(f"isolation, {setup}: read p99 loaded ÷ alone", f"≤ {bound}×", f"{value:.2f}×", value <= bound)
        )
    return found


def machine() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False).stdout.splitlines()[:1]
    versions = ", ".join(f"{name} {version(name)}" for name in PACKAGES)
    return [
        f"- {cpu}, {os.cpu_count()} cores, {memory:.0f} GiB; {platform.platform()}",
        f"- Python {platform.python_version()}; {versions}",
        f"- {' '.join(wrk)}",
    ]


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "(not installed)"


def table(rows: list[Measurement], baseline: Callable[[Measurement], Measurement | None]) -> list[str]:
    lines = [
        "| case | contender | req/s | ratio | p50 ms | p99 ms | n | errors | more |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for m in rows:
        base = baseline(m)
        ratio = f"{m.rate / base.rate:.2f}×" if base is not None and base.rate and base is not m else ""
        more = ", ".join(f"{key} {value:.3g}" for key, value in m.extra.items())
        cells = (
            m.case,
            m.contender,
            f"{m.rate:,.0f}",
            ratio,
            f"{m.p50_ms:.2f}",
            f"{m.p99_ms:.2f}",
            m.count,
            m.errors,
            more,
        )
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return lines


def chart(rows: list[Measurement], title: str, path: Path) -> None:
    cases = list(dict.fromkeys(m.case for m in rows))
    contenders = list(dict.fromkeys(m.contender for m in rows))
    rate = {(m.case, m.contender): m.rate for m in rows}
    figure, axes = plt.subplots(figsize=(10, 0.6 + 0.45 * len(cases) * len(contenders)))
    height = 0.8 / len(contenders)
    for index, contender in enumerate(contenders):
        positions = [c + index * height for c in range(len(cases))]
        axes.barh(positions, [rate.get((case, contender), 0.0) for case in cases], height=height, label=contender)
    axes.set_yticks([c + 0.4 - height / 2 for c in range(len(cases))], cases, fontsize=8)
    axes.invert_yaxis()
    axes.set_xlabel("per second (higher is better)")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def profile_lines(title: str, profile: Profile) -> list[str]:
    if profile.error:
        return [f"**{title}**: no profile ({profile.error})."]
    lines = [
        f"**{title}** ({profile.samples} samples, busy {profile.busy * 100:.0f} % of the time). Share of busy samples:",
        "",
    ]
    lines += ["| package | innermost frame | anywhere on the stack |", "|---|---:|---:|"]
    inclusive = dict(profile.inclusive)
    lines += [
        f"| {name} | {share * 100:.1f} % | {inclusive.get(name, 0.0) * 100:.1f} % |" for name, share in profile.packages
    ]
    lines += ["", "Top functions (innermost frame):", ""]
    lines += [f"- {share * 100:.1f} % `{name}`" for name, share in profile.functions]
    return lines


def write(
    out: Path,
    measurements: list[Measurement],
    profiles: dict[str, Profile],
    intro: list[str],
    pool_size: int,
    smoke: bool,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    by_scenario: dict[str, list[Measurement]] = defaultdict(list)
    for m in measurements:
        by_scenario[m.scenario].append(m)
    lines = [
        f"# orders-api benchmark{' (smoke)' if smoke else ''}",
        "",
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
        "",
        *intro,
        "",
        "## Machine",
        "",
        *machine(),
        "",
    ]
    if not smoke:
        lines += ["## Targets (issues 10, 12 and 20, and the event feed's)", ""]
        lines += ["| target | wanted | measured | |", "|---|---|---|---|"]
        lines += [
            f"| {t.name} | {t.wanted} | {t.measured} | {'met' if t.met else '**missed**'} |"
            for t in targets(measurements, pool_size)
        ]
        lines.append("")
    for scenario, rows in by_scenario.items():
        image = f"{scenario}.png"
        chart(rows, scenario, out / image)
        lines += [f"## {scenario}", "", f"![{scenario}]({image})", "", *table(rows, baseline_for(rows)), ""]
        if scenario in profiles:
            lines += [*profile_lines(f"Profile of the service during {scenario}", profiles[scenario]), ""]
    (out / "results.json").write_text(json.dumps([asdict(m) for m in measurements], indent=1))
    report = out / "README.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def baseline_for(rows: list[Measurement]) -> Callable[[Measurement], Measurement | None]:
    """Each row's ratio is against the first contender of its case (the service, where it runs)."""
    first: dict[str, Measurement] = {}
    for m in rows:
        first.setdefault(m.case, m)
    return lambda m: first.get(m.case)
