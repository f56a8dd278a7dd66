"""No Docker engine runs here: check the compose file and Dockerfile statically."""

from pathlib import Path

import yaml

from streams.runtime.config import ENV_VARS

DOCKER = Path(__file__).resolve().parents[2] / "docker"


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
    ours = [s for name, s in services.items() if name not in ("kafka", "redis")]
    assert ours
    for service in ours:
        unknown = set(service["environment"]) - ENV_VARS
        assert not unknown, f"compose sets variables the settings do not know: {unknown}"


def test_our_services_run_commands_the_cli_has():
    from streams.tools.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, service in _compose()["services"].items():
        if name in ("kafka", "redis"):
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
