"""No Docker engine runs here: check the compose file and Dockerfile statically."""

import json
from pathlib import Path

import yaml

from streams.runtime.config import ENV_VARS

DOCKER = Path(__file__).resolve().parents[2] / "docker"
THIRD_PARTY = ("kafka", "redis", "prometheus", "grafana")


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def test_compose_has_the_services():
    services = _compose()["services"]
    assert {"kafka", "redis", "worker", "sample-producer"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["sample-producer"]["restart"] == "no"
    # Scalable: no fixed container name or host port on the worker.
    assert "container_name" not in services["worker"]
    assert "ports" not in services["worker"]


def test_every_variable_set_for_our_services_is_known_to_the_settings():
    services = _compose()["services"]
    ours = [s for name, s in services.items() if name not in THIRD_PARTY]
    assert ours
    for service in ours:
        unknown = set(service["environment"]) - ENV_VARS
        assert not unknown, f"compose sets variables the settings do not know: {unknown}"


def test_our_services_run_commands_the_cli_has():
    from streams.tools.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, service in _compose()["services"].items():
        if name in THIRD_PARTY:
            continue
        assert service["command"][0] in sub, f"{name}: {service['command']}"


def test_dockerfile_installs_the_package_and_runs_the_worker():
    text = (DOCKER / "Dockerfile").read_text()
    assert "FROM python:3.11" in text
    assert "COPY schemas" in text
    assert 'CMD ["worker"]' in text
    for line in text.splitlines():
        if line.startswith("ENV"):
            for token in line.split()[1:]:
                name = token.split("=")[0]
                if name.startswith("MTA_"):
                    assert name in ENV_VARS | {"MTA_SCHEMA_DIR"}, name


def _port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def test_prometheus_scrapes_every_worker_and_the_service_where_they_listen():
    services = _compose()["services"]
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    # Every replica of the scalable worker service, on the port its settings give it.
    (worker_sd,) = jobs["worker"]["dns_sd_configs"]
    assert worker_sd["names"] == ["worker"] and worker_sd["type"] == "A"
    assert worker_sd["port"] == int(services["worker"]["environment"]["MTA_WEB_PORT"])
    (service_targets,) = jobs["service"]["static_configs"]
    listen = services["service"]["environment"]["MTA_HTTP_LISTEN"]
    assert service_targets["targets"] == [f"service:{_port(listen)}"]
    mounted = services["prometheus"]["volumes"][0].split(":")
    assert (DOCKER / mounted[0]).resolve() == (DOCKER / "prometheus.yml").resolve()
    assert mounted[1] == "/etc/prometheus/prometheus.yml"


def test_the_service_listens_beyond_loopback_only_with_a_token():
    env = _compose()["services"]["service"]["environment"]
    assert env["MTA_HTTP_LISTEN"].startswith("0.0.0.0:")
    # Compose refuses to start without it rather than serving an open API.
    assert env["MTA_HTTP_TOKEN"].startswith("${MTA_HTTP_TOKEN:?")


def test_grafana_is_provisioned_with_the_datasource_and_the_dashboard():
    grafana = _compose()["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provisioning = DOCKER / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "mta-feedback.yml").read_text())[
        "providers"
    ]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    dashboard = json.loads((DOCKER / "grafana" / "dashboards" / "mta-feedback.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == source["uid"], panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
