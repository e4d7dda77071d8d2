"""compose.yaml, validated the only way this machine can: `docker-compose config` (Debian's docker-compose
1.29; there is no Docker engine here) renders it with the operator's variables, and the rendered stack is
the one docs/operating.md describes."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML ships no stubs; schemathesis brings it

from service.app import SIDES_FOR_ROLE, require_query_access
from shared.config import Settings
from shared.roles import READ_ROLE, WRITE_ROLE

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose.yaml"
DOCKER_COMPOSE = shutil.which("docker-compose")

# What the operator must set; the file holds no default for any of them.
SECRETS = {
    "POSTGRES_PASSWORD": "owner-5ecret",
    "ORDERS_API_WRITE_PASSWORD": "write-5ecret",
    "ORDERS_API_READ_PASSWORD": "read-5ecret",
    "WRITE_API_TOKENS": "token-5ecret",
    "READ_API_TOKENS": "reader-5ecret",
}
SERVICES = {"postgres", "migrate", "pgbouncer", "writes", "reads", "proxy"}
# The `replica` profile: a streaming hot standby, and the variables that name it (docs/operating.md).
REPLICA = "postgres-replica"
REPLICA_URL = f"postgresql://{READ_ROLE}:{SECRETS['ORDERS_API_READ_PASSWORD']}@{REPLICA}:5432/orders"
REPLICA_VARIABLES = {"POSTGRES_REPLICATION_PASSWORD": "replication-5ecret", "READ_DATABASE_URL": REPLICA_URL}
# The `monitoring` profile: Prometheus and Grafana, configured from deploy/ (docs/operating.md, "Monitoring").
MONITORING = {"prometheus", "grafana"}

pytestmark = pytest.mark.skipif(
    DOCKER_COMPOSE is None,
    reason="docker-compose is not installed (.ci/run installs Debian's); compose.yaml cannot be validated",
)


def docker_compose_config(
    variables: Mapping[str, str], env_file: Path, *options: str
) -> subprocess.CompletedProcess[str]:
    """`docker-compose [options] config` with only ``variables`` in its environment: neither the caller's
    shell nor a stray .env file can fill in a value the operator would have to set."""
    assert DOCKER_COMPOSE is not None
    return subprocess.run(
        [DOCKER_COMPOSE, "--file", str(COMPOSE), "--env-file", str(env_file), *options, "config"],
        cwd=ROOT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", **variables},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def empty_env_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose") / "empty.env"
    path.write_text("")
    return path


@pytest.fixture(scope="module")
def stack(empty_env_file: Path) -> dict[str, Any]:
    result = docker_compose_config(SECRETS, empty_env_file)
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = yaml.safe_load(result.stdout)
    return rendered


@pytest.fixture(scope="module")
def monitoring_stack(empty_env_file: Path) -> dict[str, Any]:
    """The stack with the `monitoring` profile on: it needs no variable of its own."""
    result = docker_compose_config(SECRETS, empty_env_file, "--profile", "monitoring")
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = yaml.safe_load(result.stdout)
    return rendered


@pytest.fixture(scope="module")
def replica_stack(empty_env_file: Path) -> dict[str, Any]:
    """The stack with the `replica` profile on and the variables that go with it."""
    result = docker_compose_config({**SECRETS, **REPLICA_VARIABLES}, empty_env_file, "--profile", "replica")
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = yaml.safe_load(result.stdout)
    return rendered


def services(stack: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = stack["services"]
    return found


def started(stack: Mapping[str, Any], *profiles: str) -> set[str]:
    """The services `docker compose [--profile P] up` starts: those in no profile, and those in one
    of ``profiles``. (Docker-compose 1.29's `config` renders every service, with its `profiles`.)"""
    return {
        name
        for name, service in services(stack).items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def mounted(service: Mapping[str, Any], target: str) -> Path:
    """The file or folder of the repository that ``service`` sees at ``target``."""
    sources = {volume.split(":")[1]: Path(volume.split(":")[0]) for volume in service["volumes"]}
    return sources[target]


def test_the_stack_has_every_service(stack: dict[str, Any]) -> None:
    assert started(stack) == SERVICES


def test_each_role_runs_its_own_command(stack: dict[str, Any]) -> None:
    found = services(stack)
    for role in ("writes", "reads"):
        command = found[role]["command"]
        assert command[:4] == ["orders-api", "serve", "--role", role]
        # Every interface of the container: nginx reaches it over the compose network.
        assert command[command.index("--host") + 1] == "0.0.0.0"  # noqa: S104
    # Migrate first, then the roles' grants and session defaults: both need the owner.
    assert found["migrate"]["command"] == ["sh", "-c", "orders-api migrate && orders-api roles"]


def test_the_services_reach_postgres_through_pgbouncer_in_transaction_mode(stack: dict[str, Any]) -> None:
    found = services(stack)
    assert found["pgbouncer"]["environment"]["POOL_MODE"] == "transaction"
    # Nothing beyond the usual: no startup parameter is waved through.
    assert "IGNORE_STARTUP_PARAMETERS" not in found["pgbouncer"]["environment"]
    for role, database_role in (("writes", WRITE_ROLE), ("reads", READ_ROLE)):
        environment = found[role]["environment"]
        url = urlsplit(environment["DATABASE_URL"])
        assert (url.hostname, url.username) == ("pgbouncer", database_role)
        assert environment["PGBOUNCER"] == "true"
    # Schema changes go straight to PostgreSQL, as the owner.
    assert urlsplit(found["migrate"]["environment"]["DATABASE_URL"]).hostname == "postgres"


def test_secrets_come_from_the_environment(stack: dict[str, Any]) -> None:
    found = services(stack)
    assert urlsplit(found["writes"]["environment"]["DATABASE_URL"]).password == SECRETS["ORDERS_API_WRITE_PASSWORD"]
    assert urlsplit(found["reads"]["environment"]["DATABASE_URL"]).password == SECRETS["ORDERS_API_READ_PASSWORD"]
    assert urlsplit(found["migrate"]["environment"]["DATABASE_URL"]).password == SECRETS["POSTGRES_PASSWORD"]
    assert found["writes"]["environment"]["WRITE_API_TOKENS"] == SECRETS["WRITE_API_TOKENS"]
    # A reads process holds neither the write password nor the write tokens.
    reads = str(found["reads"])
    assert SECRETS["ORDERS_API_WRITE_PASSWORD"] not in reads
    assert SECRETS["WRITE_API_TOKENS"] not in reads


@pytest.mark.parametrize("missing", sorted(SECRETS))
def test_an_unset_secret_stops_the_stack_naming_it(missing: str, empty_env_file: Path) -> None:
    variables = {name: value for name, value in SECRETS.items() if name != missing}
    result = docker_compose_config(variables, empty_env_file)
    assert result.returncode != 0
    # The message ends with the file's own words for the variable.
    assert result.stderr.strip().rsplit(": ", 1)[-1].startswith(f"set {missing}"), result.stderr


def test_each_role_starts_and_queries_need_a_read_token(stack: dict[str, Any]) -> None:
    found = services(stack)
    for role in ("reads", "writes"):
        # What `serve --role` checks before it serves: the stack's settings pass it.
        require_query_access(Settings.from_env(found[role]["environment"]), SIDES_FOR_ROLE[role])
    reads = Settings.from_env(found["reads"]["environment"])
    assert (reads.read_api_tokens, reads.read_api_open) == ((SECRETS["READ_API_TOKENS"],), False)


def test_reads_scale_with_no_fixed_name_or_host_port(stack: dict[str, Any]) -> None:
    found = services(stack)
    for role in ("reads", "writes"):
        assert "container_name" not in found[role]
        assert "ports" not in found[role]
        assert found[role]["expose"] == ["8000"]
    # One published port, the proxy's (the `monitoring` profile publishes its own).
    assert [name for name in sorted(started(stack)) if "ports" in found[name]] == ["proxy"]
    assert len(found["proxy"]["ports"]) == 1


def test_services_start_in_order_and_report_readiness(stack: dict[str, Any]) -> None:
    found = services(stack)
    assert found["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert found["pgbouncer"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for role in ("writes", "reads"):
        assert found[role]["depends_on"] == {
            "migrate": {"condition": "service_completed_successfully"},
            "pgbouncer": {"condition": "service_healthy"},
        }
        assert any("/readyz" in part for part in found[role]["healthcheck"]["test"])
    assert found["proxy"]["depends_on"] == {
        "writes": {"condition": "service_healthy"},
        "reads": {"condition": "service_healthy"},
    }
    for name in ("postgres", "pgbouncer"):
        assert found[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")


def test_shutdown_finishes_before_compose_kills(stack: dict[str, Any]) -> None:
    for role in ("writes", "reads"):
        service = services(stack)[role]
        grace = float(service["stop_grace_period"].removesuffix("s"))
        assert float(service["environment"]["SHUTDOWN_TIMEOUT"]) < grace


def test_the_postgres_volume_is_named(stack: dict[str, Any]) -> None:
    assert "pgdata" in stack["volumes"]
    assert "pgdata:/var/lib/postgresql:rw" in services(stack)["postgres"]["volumes"]


def test_the_proxy_sends_get_and_head_to_reads_and_the_rest_to_writes(stack: dict[str, Any]) -> None:
    config = mounted(services(stack)["proxy"], "/etc/nginx/conf.d/default.conf").read_text()
    by_method = re.search(r"map \$request_method \$side \{(.*?)\}", config, re.S)
    assert by_method is not None
    assert dict(re.findall(r"(\S+)\s+(\w+);", by_method[1])) == {"GET": "reads", "HEAD": "reads", "default": "writes"}
    # Docker's DNS, asked per request (a variable in proxy_pass), so scaled replicas are found.
    assert re.search(r"^resolver 127\.0\.0\.11\b", config, re.M)
    assert "proxy_pass http://$side:8000;" in config


def test_the_database_init_creates_the_roles_the_service_connects_as(stack: dict[str, Any]) -> None:
    scripts = list(mounted(services(stack)["postgres"], "/docker-entrypoint-initdb.d").glob("*.sh"))
    created = set(re.findall(r"CREATE ROLE (\w+) LOGIN", "".join(script.read_text() for script in scripts)))
    assert created == {READ_ROLE, WRITE_ROLE}


def test_the_image_installs_only_through_pip() -> None:
    runs = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("RUN ")]
    assert runs
    # The project itself (with its extras), from the copied source: `pip install ".[otel]"`.
    assert all(shlex.split(line.removeprefix("RUN "))[:3][:2] == ["pip", "install"] for line in runs)
    assert all(shlex.split(line.removeprefix("RUN "))[2].startswith(".") for line in runs)
    assert not any(manager in line for line in runs for manager in ("apt-get", "apt ", "apk ", "dnf ", "yum "))


def base_backup(replica: Mapping[str, Any]) -> list[str]:
    """The words of the replica's pg_basebackup command (its script's continued lines joined)."""
    script = replica["command"][-1].replace("\\\n", " ")
    line = next(line for line in script.splitlines() if line.strip().startswith("pg_basebackup"))
    return shlex.split(line)


def option(words: list[str], name: str) -> str:
    return next(word.split("=", 1)[1] for word in words if word.startswith(f"{name}="))


def test_the_replica_runs_only_with_its_profile(stack: dict[str, Any], replica_stack: dict[str, Any]) -> None:
    assert REPLICA not in started(stack)
    assert started(replica_stack, "replica") == SERVICES | {REPLICA}
    assert services(replica_stack)[REPLICA]["profiles"] == ["replica"]
    # Without the profile the sides read the primary only: an empty value is an unset setting.
    for role in ("reads", "writes"):
        assert services(stack)[role]["environment"]["READ_DATABASE_URL"] == ""
        assert Settings.from_env(services(stack)[role]["environment"]).read_database_url is None


def test_the_replica_copies_the_primary_then_runs_as_a_hot_standby(replica_stack: dict[str, Any]) -> None:
    found = services(replica_stack)
    replica = found[REPLICA]
    assert replica["image"] == found["postgres"]["image"]
    words = base_backup(replica)
    assert option(words, "--host") == "postgres"
    assert {"--write-recovery-conf", "--wal-method=stream"} <= set(words)
    # Started once the primary answers; PostgreSQL runs as postgres, not root.
    assert replica["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert replica["user"] == "postgres"
    script = replica["command"][-1]
    assert "hot_standby=on" in script
    # A hot standby refuses fewer connections than its primary: the same value for both.
    primary_max = next(word for word in found["postgres"]["command"] if word.startswith("max_connections="))
    assert f"-c {primary_max}" in script
    # Its own data, and the password it streams with from the environment.
    assert "replica-pgdata:/var/lib/postgresql:rw" in replica["volumes"]
    assert "replica-pgdata" in replica_stack["volumes"]
    assert replica["environment"]["PGPASSWORD"] == REPLICA_VARIABLES["POSTGRES_REPLICATION_PASSWORD"]
    assert "ports" not in replica


def test_the_primary_init_lets_the_replica_stream(replica_stack: dict[str, Any]) -> None:
    found = services(replica_stack)
    words = base_backup(found[REPLICA])
    user, slot = option(words, "--username"), option(words, "--slot")
    scripts = mounted(found["postgres"], "/docker-entrypoint-initdb.d").glob("*.sh")
    init = "".join(script.read_text() for script in sorted(scripts))
    assert re.search(rf"CREATE ROLE {user} WITH REPLICATION LOGIN PASSWORD", init)
    assert f"pg_create_physical_replication_slot('{slot}')" in init
    # `all` in pg_hba's database column does not match a replication connection: a line of its own.
    assert re.search(rf'"host replication {user} all scram-sha-256" >>"\$PGDATA/pg_hba.conf"', init)
    password = REPLICA_VARIABLES["POSTGRES_REPLICATION_PASSWORD"]
    assert found["postgres"]["environment"]["POSTGRES_REPLICATION_PASSWORD"] == password


def test_with_the_profile_the_sides_name_the_replica(replica_stack: dict[str, Any]) -> None:
    found = services(replica_stack)
    for role in ("reads", "writes"):
        settings = Settings.from_env(found[role]["environment"])
        assert settings.read_host_urls == [REPLICA_URL]
        # The primary stays behind PgBouncer: commands, and the queries no replica can answer.
        assert urlsplit(settings.write_url).hostname == "pgbouncer"
    # The replica's password is not the service's: neither side holds it.
    for role in ("reads", "writes"):
        assert REPLICA_VARIABLES["POSTGRES_REPLICATION_PASSWORD"] not in str(found[role])


def test_monitoring_runs_only_with_its_profile(stack: dict[str, Any], monitoring_stack: dict[str, Any]) -> None:
    assert not started(stack) & MONITORING
    assert started(monitoring_stack, "monitoring") == SERVICES | MONITORING
    for name in MONITORING:
        service = services(monitoring_stack)[name]
        assert service["profiles"] == ["monitoring"]
        # Published on the loopback only, like the proxy.
        assert [port.split(":")[0] for port in service["ports"]] == ["127.0.0.1"]


def container_port(service: Mapping[str, Any]) -> int:
    (published,) = service["ports"]
    return int(published.rsplit(":", 1)[1].split("/")[0])


def test_prometheus_loads_its_config_and_alerts_from_deploy_and_scrapes_both_roles(
    monitoring_stack: dict[str, Any],
) -> None:
    found = services(monitoring_stack)
    prometheus = found["prometheus"]
    directory = mounted(prometheus, "/etc/prometheus")
    assert directory == ROOT / "deploy" / "prometheus"
    flag = next(word for word in prometheus["command"] if word.startswith("--config.file="))
    config_file = directory / Path(flag.split("=", 1)[1]).relative_to("/etc/prometheus")
    config = yaml.safe_load(config_file.read_text())
    # Rule files are found next to the config file, in the same mounted directory.
    assert config["rule_files"]
    assert all((directory / rules).is_file() for rules in config["rule_files"])
    # Every writes and reads container, on the compose network, at the port each exposes.
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert set(discovery["names"]) == {"writes", "reads"}
    assert [str(discovery["port"])] == found["writes"]["expose"] == found["reads"]["expose"]


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard_from_deploy(monitoring_stack: dict[str, Any]) -> None:
    found = services(monitoring_stack)
    grafana = found["grafana"]
    datasources = mounted(grafana, "/etc/grafana/provisioning/datasources")
    providers = mounted(grafana, "/etc/grafana/provisioning/dashboards")
    assert {datasources.parent, providers.parent} == {ROOT / "deploy" / "grafana" / "provisioning"}
    (source,) = [
        entry for file in datasources.glob("*.yml") for entry in yaml.safe_load(file.read_text())["datasources"]
    ]
    url = urlsplit(source["url"])
    assert (url.hostname, url.port) == ("prometheus", container_port(found["prometheus"]))
    (provider,) = [entry for file in providers.glob("*.yml") for entry in yaml.safe_load(file.read_text())["providers"]]
    dashboards = list(mounted(grafana, provider["options"]["path"]).glob("*.json"))
    assert [file.name for file in dashboards] == ["orders-api.json"]
    # Every query of the dashboard asks the provisioned datasource.
    panels = json.loads(dashboards[0].read_text())["panels"]
    asked = {target["datasource"]["uid"] for panel in panels for target in panel.get("targets", [])}
    assert asked == {source["uid"]}


# Settings the stack sets otherwise, or on purpose not at all.
NOT_PASSED = {
    "ORDERS_API_ROLE": "each service's --role sets it",
    "WRITE_DATABASE_URL": "the writes service's DATABASE_URL is the write role's",
    "READ_API_OPEN": "the stack's queries always need READ_API_TOKENS",
    "READ_STATEMENT_CACHE_SIZE": "PGBOUNCER=true: no statement cache on either side",
}


def test_every_setting_reaches_the_services_that_read_it(stack: dict[str, Any]) -> None:
    # An operator's .env must not silently do nothing: every variable of docs/configuration.md is
    # passed through to writes or reads (both, for what both read), unless it is listed above.
    found = services(stack)
    passed = set(found["writes"]["environment"]) | set(found["reads"]["environment"])
    missing = {name.upper() for name in Settings.__struct_fields__} - passed - set(NOT_PASSED)
    assert not missing, f"compose.yaml passes none of {sorted(missing)}"
