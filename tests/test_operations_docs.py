"""docs/ for operators: every metric the Grafana dashboard plots is one glmaas exposes, and the
docker-compose example holds together (its services, the files it mounts, what it points at).

`docker compose config` validates the compose file itself where the compose tool is installed;
this test checks what it cannot: that the example matches this code."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.api.billing_helpers import admin
from tests.inprocess import AppServer

DOCS = Path(__file__).resolve().parents[1] / "docs"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


def _dashboard_metrics() -> set[str]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs, "the dashboard plots nothing"
    return {name for expr in exprs for name in re.findall(r"\bglmaas_[a-z0-9_]+", expr)}


def test_every_metric_the_dashboard_plots_is_scraped(tmp_path: Path) -> None:
    server = AppServer(tmp_path, "--no-default-model", "--model", "mock=mock")
    try:
        with admin(server) as client:
            text = client.get("/metrics").text
    finally:
        server.stop()
    # A family is named even before its first sample; its samples add the _total/_bucket/... names.
    exposed = set()
    for family in text_string_to_metric_families(text):
        exposed.add(family.name)
        exposed.add(f"{family.name}_total" if family.type == "counter" else family.name)
        if family.type == "histogram":
            exposed.update(family.name + suffix for suffix in HISTOGRAM_SERIES)
    missing = _dashboard_metrics() - exposed
    assert not missing, f"the dashboard plots metrics glmaas does not expose: {sorted(missing)}"


def test_operations_doc_lists_every_metric_the_server_exposes(tmp_path: Path) -> None:
    doc = (DOCS / "operations.md").read_text()
    server = AppServer(tmp_path, "--no-default-model", "--model", "mock=mock")
    try:
        with admin(server) as client:
            families = list(text_string_to_metric_families(client.get("/metrics").text))
    finally:
        server.stop()
    names = {f"{f.name}_total" if f.type == "counter" else f.name for f in families}
    assert not {n for n in names if f"`{n}`" not in doc}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCS / "docker-compose.yml").read_text())


def test_compose_runs_two_replicas_on_postgresql_and_redis_with_prometheus_and_grafana(compose: dict) -> None:
    services = compose["services"]
    assert {"glmaas-1", "glmaas-2", "postgres", "redis", "prometheus", "grafana"} <= services.keys()
    for name in ("glmaas-1", "glmaas-2"):
        replica = services[name]
        command = " ".join(replica["command"])
        assert "--database-url=postgresql+psycopg://" in command and "@postgres:5432/" in command
        assert "--redis-url=redis://redis:6379/" in command
        assert "--metrics-port=9100" in command and "--log-format=json" in command
        assert {"postgres", "redis"} <= replica["depends_on"].keys()
        assert "/readyz" in " ".join(replica["healthcheck"]["test"])
        drain = int(re.search(r"--drain-timeout=(\d+)", command).group(1))
        assert int(replica["stop_grace_period"].rstrip("s")) > drain  # SIGKILL only after the drain
        assert (DOCS.parent / replica["build"]["context"].replace("..", ".") / replica["build"]["dockerfile"]).exists()


def test_compose_volumes_and_mounted_files_exist(compose: dict) -> None:
    declared = set(compose["volumes"])
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DOCS / source).exists(), f"{name} mounts {source}, which docs/ lacks"
            else:
                assert source in declared, f"{name} uses the undeclared volume {source}"
        for dependency in service.get("depends_on", []):
            assert dependency in compose["services"], f"{name} depends on unknown {dependency}"


def test_prometheus_scrapes_each_replica_on_its_metrics_port(compose: dict) -> None:
    prometheus = yaml.safe_load((DOCS / "prometheus.yml").read_text())
    targets = {t for job in prometheus["scrape_configs"] for c in job["static_configs"] for t in c["targets"]}
    assert targets == {"glmaas-1:9100", "glmaas-2:9100"}
    datasource = yaml.safe_load((DOCS / "grafana/provisioning/datasources/prometheus.yml").read_text())
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert uids == {datasource["datasources"][0]["uid"]}
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_the_compose_tool_accepts_the_file() -> None:
    import shutil
    import subprocess

    tool = shutil.which("docker-compose")
    if tool is None:
        pytest.skip("docker-compose is not installed (the structural tests above still ran)")
    env = {"PATH": "/usr/bin:/bin", "GLMAAS_MASTER_KEY": "k", "GLMAAS_ADMIN_TOKEN": "t"}
    done = subprocess.run([tool, "-f", str(DOCS / "docker-compose.yml"), "config", "-q"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
