"""deploy/'s monitoring: Prometheus's configuration and alerts pass promtool, each alert fires in promtool's
unit tests, every query of the Grafana dashboard parses, and every series the dashboard and the alerts
name is one the service's ``/metrics`` exports, so renaming a series fails here. Also the process series
the dashboard shows: memory, CPU and open file descriptors of each process, by pid, with ``--workers``
too."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs; schemathesis brings it
from prometheus_client.parser import text_string_to_metric_families

from tests.processes import serve_env, serving_process, wait_until
from tests.support import AUTH

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "orders-api.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool is not installed (.ci/run installs Debian's prometheus package)"
)

# Series Prometheus itself adds to every scrape: no service exports them.
PROMETHEUS_OWN = {"up"}
# A family's sample names by its type (the exposition format's suffixes).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_count", "_sum")}
PROCESS_SERIES = {
    "process_resident_memory_bytes",
    "process_virtual_memory_bytes",
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
}

# --- PromQL: the series an expression names ----------------------------------------------------------

# What holds no series name: quoted strings, label matchers, range and subquery brackets, and the
# label lists of by/without/on/ignoring/group_left/group_right.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS_AND_RANGES = re.compile(r"\{[^}]*\}|\[[^\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# A whole identifier (not part of a number, a duration or a $variable) not followed by "(": not a function.
_IDENTIFIER = re.compile(r"(?<![\w:.$])[a-zA-Z_:][\w:]*(?![\w:])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right"}


def series_names(expression: str) -> set[str]:
    """The series names in a PromQL expression."""
    stripped = _STRINGS.sub("", expression)
    stripped = _MATCHERS_AND_RANGES.sub("", stripped)
    stripped = _LABEL_LISTS.sub("", stripped)
    return set(_IDENTIFIER.findall(stripped)) - _KEYWORDS


def dashboard_queries() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def named_series() -> set[str]:
    expressions = dashboard_queries() + [rule["expr"] for rule in alert_rules()]
    return {name for expression in expressions for name in series_names(expression)}


def exported_series(text: str) -> dict[str, set[str]]:
    """Each family of a /metrics answer and the sample names it has or may have: a family with no
    samples yet (a counter nothing has counted) is declared all the same, with its type."""
    return {
        family.name: {family.name + suffix for suffix in SUFFIXES[family.type]}
        | {sample.name for sample in family.samples}
        for family in text_string_to_metric_families(text)
    }


def test_the_name_parser_finds_series_not_functions_labels_or_keywords() -> None:
    assert series_names(
        'histogram_quantile(0.99, sum by (le, pool) (rate(db_pool_acquire_seconds_bucket{job="x", route!~"/a|b"}[5m])))'
    ) == {"db_pool_acquire_seconds_bucket"}
    assert series_names("a_total / on (pid) group_left () b > bool 0.5 unless c offset 1m") == {"a_total", "b", "c"}
    assert series_names('time() - process_start_time_seconds{pid="7"} > 1e3') == {"process_start_time_seconds"}
    assert series_names("rate(x[$__rate_interval]) / ignoring(le) max_over_time(y[5m:1m])") == {"x", "y"}


async def _scrape_after_requests(client: httpx.AsyncClient) -> dict[str, set[str]]:
    # A few requests of each side, so the request series have samples as well as declarations.
    assert (await client.get("/v1/orders/1")).status_code == 404
    assert (await client.get("/v1/stats/products/top", params={"days": 7})).status_code == 200
    created = await client.post("/v1/customers", json={"email": "ada@example.com", "name": "Ada"}, headers=AUTH)
    assert created.status_code == 201, created.text
    response = await client.get("/metrics")
    assert response.status_code == 200
    return exported_series(response.text)


async def test_every_series_the_dashboard_and_the_alerts_name_is_exported(client: httpx.AsyncClient) -> None:
    exported = set().union(*(await _scrape_after_requests(client)).values())
    assert named_series() - PROMETHEUS_OWN - exported == set()


async def test_the_dashboard_shows_every_series_the_service_exports(client: httpx.AsyncClient) -> None:
    shown = {name for query in dashboard_queries() for name in series_names(query)}
    families = await _scrape_after_requests(client)
    assert {family for family, names in families.items() if not names & shown} == set()


# --- promtool --------------------------------------------------------------------------------------


def promtool(*arguments: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *arguments], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@needs_promtool
def test_the_alert_rules_are_valid() -> None:
    checked = promtool("check", "rules", "alerts.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr


@needs_promtool
def test_the_scrape_config_is_valid_and_loads_the_alerts() -> None:
    # Offline: the DNS discovery of the writes and reads containers is checked, not resolved.
    checked = promtool("check", "config", "prometheus.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]


@needs_promtool
def test_each_alert_fires_on_the_series_it_watches() -> None:
    tested = promtool("test", "rules", "alerts_test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    cases = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())["tests"]
    exercised = {check["alertname"] for case in cases for check in case["alert_rule_test"] if check["exp_alerts"]}
    assert exercised == {rule["alert"] for rule in alert_rules()}


@needs_promtool
def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    # Grafana replaces $__rate_interval before Prometheus sees a query; promtool parses rules, so each
    # query becomes a recording rule.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": query.replace("$__rate_interval", "5m")}
        for n, query in enumerate(dashboard_queries())
    ]
    assert rules
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = promtool("check", "rules", "dashboard.yml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- process series ----------------------------------------------------------------------------------


def _process_samples(text: str) -> dict[str, dict[str, float]]:
    """Each process series' value by pid."""
    found: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in PROCESS_SERIES:
                found.setdefault(sample.name, {})[sample.labels["pid"]] = sample.value
    return found


async def test_metrics_reports_this_process_by_pid(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")
    found = _process_samples(response.text)
    pid = str(os.getpid())
    assert set(found) == PROCESS_SERIES
    assert all(set(by_pid) == {pid} for by_pid in found.values()), found
    assert found["process_resident_memory_bytes"][pid] > 0
    assert 0 < found["process_open_fds"][pid] <= found["process_max_fds"][pid]
    assert found["process_cpu_seconds_total"][pid] > 0


def _workers(parent: int) -> set[int]:
    """The uvicorn workers of ``parent``: its children started by multiprocessing's spawn."""
    children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    return {int(child) for child in children if b"spawn_main" in Path(f"/proc/{child}/cmdline").read_bytes()}


def test_with_two_workers_every_scrape_reports_both_processes(database_url: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    env = serve_env(database_url, WRITE_POOL_SIZE="2", READ_POOL_MIN_SIZE="1", READ_POOL_MAX_SIZE="3")

    def scrape(url: str) -> dict[str, dict[str, float]]:
        # A new connection each time, so that each scrape may be answered by either worker.
        response = httpx.get(f"{url}/metrics", timeout=5.0, headers={"Connection": "close"})
        assert response.status_code == 200, response.text
        return _process_samples(response.text)

    with serving_process("--workers", "2", env=env, log=log) as (process, url):
        # Each worker publishes its pools' gauges once they are open: then both are in every answer.
        wait_until(lambda: len(scrape(url).get("process_resident_memory_bytes", {})) == 2, process, log)
        workers = {str(pid) for pid in _workers(process.pid)}
        scrapes = [scrape(url) for _ in range(6)]
    assert len(workers) == 2, workers
    for found in scrapes:
        assert set(found) == PROCESS_SERIES
        for series, by_pid in found.items():
            assert set(by_pid) == workers, (series, by_pid)
        assert all(value > 0 for value in found["process_resident_memory_bytes"].values())
        assert all(value > 0 for value in found["process_open_fds"].values())
