"""No Docker engine runs here: check the compose file, the Dockerfile, the Prometheus and
Grafana configuration and the Kubernetes manifest statically, and run the workers' data
slot script with a stand-in for the CLI."""

import fnmatch
import json
import os
import posixpath
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import yaml

from streams.runtime.config import ENV_VARS, KNOWN_VARS, Settings

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error}, ${NAME?error}
_INTERPOLATION = re.compile(r"\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yml").read_text())


def _ours(services: dict) -> dict:
    """The services that run the project's image (the rest are third-party images)."""
    return {name: s for name, s in services.items() if "build" in s}


def _interpolated(value: object) -> str:
    """A compose value as compose sees it with nothing set in the environment: defaults
    taken, required variables given a stand-in."""
    return _INTERPOLATION.sub(
        lambda m: m.group(3) if m.group(2) in ("-", ":-") else f"<{m.group(1)}>",
        str(value),
    )


def _env(service: dict) -> dict[str, str]:
    return {name: _interpolated(value) for name, value in service["environment"].items()}


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.split("://")[-1].split("/")[0].rpartition(":")
    return host, int(port)


def _memory_bytes(text: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kmg]?)i?b?", str(text).lower()).groups()  # type: ignore[union-attr]
    return int(number) * 1024 ** "_kmg".index(unit or "_")


def test_compose_has_the_services():
    services = _compose()["services"]
    assert {
        "kafka",
        "schema-registry",
        "redis",
        "topics",
        "worker",
        "service",
        "sample-producer",
        "prometheus",
        "grafana",
    } <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert services["schema-registry"]["image"].startswith("confluentinc/cp-schema-registry:")
    assert services["topics"]["command"] == ["stack", "up"]


def test_every_service_has_a_pinned_image_or_a_build_that_exists():
    for name, service in _compose()["services"].items():
        if "build" in service:
            context = (DOCKER / service["build"]["context"]).resolve()
            assert context == ROOT, name
            assert (context / service["build"]["dockerfile"]).is_file(), name
        else:
            image, _, tag = service["image"].rpartition(":")
            assert image and tag and tag != "latest", f"{name}: pin the image's version"


def test_project_services_set_only_real_settings_with_values_they_accept():
    services = _ours(_compose()["services"])
    assert set(services) == {"topics", "worker", "service", "sample-producer"}
    for name, service in services.items():
        env = _env(service)
        unknown = set(env) - ENV_VARS
        assert not unknown, f"{name} sets variables the settings do not know: {unknown}"
        Settings.from_env(env)  # raises ConfigError on a value a setting refuses


def test_variables_compose_takes_from_the_shell_do_not_pose_as_settings():
    # The CLI warns about any MTA_* variable it does not read, so one meant for compose
    # only would be reported by every mta-feedback command run from the same shell.
    names = {m.group(1) for m in _INTERPOLATION.finditer((DOCKER / "compose.yml").read_text())}
    assert "MTA_HTTP_TOKEN" in names
    for name in names:
        assert name in ENV_VARS or not name.startswith("MTA_"), name


def test_our_services_run_commands_the_cli_has():
    from streams.tools.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, service in _ours(_compose()["services"]).items():
        assert service["command"][0] in sub, f"{name}: {service['command']}"


def test_kafka_advertises_a_listener_for_containers_and_one_for_the_host():
    services = _compose()["services"]
    env = services["kafka"]["environment"]
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(item.split("://") for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(
        item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert set(listeners) <= set(protocols)
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] not in advertised
    by_host = {_host_port(address)[0]: name for name, address in advertised.items()}
    assert set(by_host) == {"kafka", "localhost"}
    internal, host = by_host["kafka"], by_host["localhost"]
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] == internal
    # Containers reach the internal listener at the address Kafka gives them.
    for name, service in _ours(services).items():
        assert _env(service)["MTA_BOOTSTRAP_SERVERS"] == advertised[internal], name
    # The host listener's port is published as is, so the advertised address works there.
    port = _host_port(advertised[host])[1]
    assert f"{port}:{_host_port(listeners[host])[1]}" in services["kafka"]["ports"]


def test_the_schema_registry_is_healthy_before_the_topic_job_and_every_service_uses_it():
    services = _compose()["services"]
    registry = services["schema-registry"]
    listen = _host_port(registry["environment"]["SCHEMA_REGISTRY_LISTENERS"])
    assert registry["healthcheck"]["test"]
    assert "kafka:9092" in registry["environment"]["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"]
    for name, service in _ours(services).items():
        url = _env(service)["SCHEMA_REGISTRY_URL"]
        assert _host_port(url) == ("schema-registry", listen[1]), name
    assert services["topics"]["depends_on"]["schema-registry"] == {"condition": "service_healthy"}


def test_long_running_services_have_health_checks_limits_and_restart():
    for name, service in _compose()["services"].items():
        limits = service["deploy"]["resources"]["limits"]
        assert 0 < float(limits["cpus"]) <= 2, name
        assert 128 * 2**20 <= _memory_bytes(limits["memory"]) <= 4 * 2**30, name
        if service["restart"] == "no":
            assert "healthcheck" not in service, f"{name} is a one-shot job"
            continue
        assert service["restart"] == "unless-stopped", name
        check = service["healthcheck"]
        assert check["test"][0] in ("CMD", "CMD-SHELL") and len(check["test"]) > 1, name


def test_dependencies_wait_for_what_their_condition_needs():
    services = _compose()["services"]
    for name, service in services.items():
        depends = service.get("depends_on", [])
        for target, rule in depends.items() if isinstance(depends, dict) else []:
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], f"{name} waits on {target}"
            elif rule["condition"] == "service_completed_successfully":
                assert services[target]["restart"] == "no", f"{name} waits on {target}"


def _probe_url(check: dict) -> str:
    (url,) = re.findall(r"http://[^'\" ]+", " ".join(check["test"]))
    return url


def test_workers_scale_with_a_health_check_limits_and_state_on_a_named_volume():
    compose = _compose()
    worker = compose["services"]["worker"]
    env = _env(worker)
    # --scale: no fixed name or host port for replicas to collide on.
    assert "container_name" not in worker and "ports" not in worker
    assert _probe_url(worker["healthcheck"]) == f"http://127.0.0.1:{env['MTA_WEB_PORT']}/healthz"
    assert worker["healthcheck"]["test"][1] == "python"  # the image has no curl
    assert env["MTA_STORE"] == "rocksdb://"
    (mount,) = worker["volumes"]
    volume, target = mount.split(":")
    assert volume in compose["volumes"] and target == env["MTA_DATA_DIR"]
    # Replicas share the volume: the entry point gives each a directory of its own.
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert f"docker/data-slot.sh /usr/local/bin/{worker['entrypoint'][0]}" in dockerfile


def test_the_service_listens_beyond_loopback_only_with_a_token_and_is_checked():
    service = _compose()["services"]["service"]
    env = service["environment"]
    assert env["MTA_HTTP_LISTEN"].startswith("0.0.0.0:")
    # Compose refuses to start without it rather than serving an open API.
    assert env["MTA_HTTP_TOKEN"].startswith("${MTA_HTTP_TOKEN:?")
    port = _host_port(env["MTA_HTTP_LISTEN"])[1]
    assert _probe_url(service["healthcheck"]) == f"http://127.0.0.1:{port}/healthz"
    assert f"{port}:{port}" in service["ports"]


def test_kafka_and_worker_state_are_volumes_dropped_together():
    compose = _compose()
    kafka = compose["services"]["kafka"]
    (mount,) = kafka["volumes"]
    volume, target = mount.split(":")
    assert volume in compose["volumes"] and target == kafka["environment"]["KAFKA_LOG_DIRS"]


def _run_slot(tmp_path: Path, *args: str, data_dir: str) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"}
    env["MTA_DATA_DIR"] = data_dir
    return subprocess.Popen(
        ["sh", str(DOCKER / "data-slot.sh"), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_data_slot_gives_each_live_worker_a_directory_of_its_own(tmp_path):
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "mta-feedback"
    # Says where it runs, then holds the slot for as long as asked (exec keeps the lock).
    stand_in.write_text('#!/bin/sh\necho "$MTA_DATA_DIR $1"\nexec sleep "$2"\n')
    stand_in.chmod(0o755)
    data = str(tmp_path / "data")
    first = _run_slot(tmp_path, "worker", "30", data_dir=data)
    second = _run_slot(tmp_path, "worker", "30", data_dir=data)
    try:
        freed = first.stdout.readline().split()[0]  # type: ignore[union-attr]
        held = second.stdout.readline().split()[0]  # type: ignore[union-attr]
        assert {freed, held} == {f"{data}/slot-0", f"{data}/slot-1"}
        third = _run_slot(tmp_path, "worker", "0", data_dir=data)
        assert third.communicate(timeout=10)[0].split() == [f"{data}/slot-2", "worker"]
        first.kill()
        first.wait(timeout=10)
        # The slot of a worker that died goes to the next one, the lowest free slot.
        again = _run_slot(tmp_path, "worker", "0", data_dir=data)
        assert again.communicate(timeout=10)[0].split()[0] == freed
    finally:
        for process in (first, second):
            process.kill()
            process.wait(timeout=10)
    missing = _run_slot(tmp_path, "worker", "0", data_dir="")
    assert missing.wait(timeout=10) != 0 and missing.communicate()[0] == ""


def _copies(dockerfile: str) -> dict[str, str]:
    """Source → destination of every COPY from the build context."""
    copies = {}
    for line in dockerfile.splitlines():
        if line.startswith("COPY "):
            *sources, dest = [w for w in shlex.split(line)[1:] if not w.startswith("--")]
            copies.update(dict.fromkeys(sources, dest))
    return copies


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether a .dockerignore excludes ``path`` (the last matching pattern decides)."""
    excluded = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        if fnmatch.fnmatch(path, pattern.lstrip("!")):
            excluded = not negate
    return excluded


def test_the_image_gets_what_the_package_build_reads_and_nothing_else():
    dockerfile = (DOCKER / "Dockerfile").read_text()
    copies = _copies(dockerfile)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    setuptools = pyproject["tool"]["setuptools"]
    packages = setuptools.get("packages") or setuptools["packages"]["find"]["include"]
    needed = {"pyproject.toml", pyproject["project"]["readme"]}
    needed |= {name.split(".")[0].rstrip("*") for name in packages}
    needed |= set(setuptools.get("package-dir", {}).values())
    for path in needed:
        assert (ROOT / path).exists(), path
        assert path in copies, f"the Dockerfile does not copy {path}"
    patterns = [
        line.strip()
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copies:
        assert (ROOT / source).exists(), source
        assert not _ignored(source, patterns), f"{source} is left out of the build context"
    for bulky in (".venv", ".run", ".git", "tests"):
        assert _ignored(bulky, patterns), bulky
    extras = re.search(r"pip install [^\n]*'\.\[([\w,]+)\]'", dockerfile).group(1).split(",")  # type: ignore[union-attr]
    assert "rocksdb" in extras
    assert set(extras) <= set(pyproject["project"]["optional-dependencies"])


def test_the_dockerfile_sets_known_variables_and_runs_the_worker_as_its_user():
    text = (DOCKER / "Dockerfile").read_text()
    assert "FROM python:3.11" in text
    assert 'ENTRYPOINT ["mta-feedback"]' in text and 'CMD ["worker"]' in text
    env = dict(re.findall(r"(MTA_\w+)=(\S+)", text))
    assert set(env) <= KNOWN_VARS, set(env) - KNOWN_VARS
    workdir = re.search(r"^WORKDIR (\S+)$", text, re.MULTILINE).group(1)  # type: ignore[union-attr]
    assert env["MTA_SCHEMA_DIR"] == posixpath.normpath(f"{workdir}/{_copies(text)['schemas']}")
    assert re.search(r"^USER mta$", text, re.MULTILINE)
    assert f"VOLUME {env['MTA_DATA_DIR']}" in text


def test_prometheus_scrapes_every_worker_and_the_service_where_they_listen():
    services = _compose()["services"]
    prometheus = yaml.safe_load((DOCKER / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in prometheus["scrape_configs"]}
    # Every replica of the scalable worker service, on the port its settings give it:
    # Docker's DNS answers the service name with one A record per replica.
    (worker_sd,) = jobs["worker"]["dns_sd_configs"]
    assert "static_configs" not in jobs["worker"]
    assert worker_sd["names"] == ["worker"] and worker_sd["type"] == "A"
    assert worker_sd["port"] == int(services["worker"]["environment"]["MTA_WEB_PORT"])
    (service_targets,) = jobs["service"]["static_configs"]
    listen = services["service"]["environment"]["MTA_HTTP_LISTEN"]
    assert service_targets["targets"] == [f"service:{_host_port(listen)[1]}"]
    mounted = services["prometheus"]["volumes"][0].split(":")
    assert (DOCKER / mounted[0]).resolve() == (DOCKER / "prometheus.yml").resolve()
    assert mounted[1] == "/etc/prometheus/prometheus.yml"


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


def _k8s() -> tuple[dict, dict]:
    documents = list(yaml.safe_load_all((DOCKER / "k8s" / "worker-statefulset.yaml").read_text()))
    by_kind = {doc["kind"]: doc for doc in documents}
    assert len(by_kind) == len(documents) == 2
    return by_kind["Service"], by_kind["StatefulSet"]


def test_the_kubernetes_workers_are_a_statefulset_with_a_volume_per_pod_and_probes():
    service, statefulset = _k8s()
    spec = statefulset["spec"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item.get("value", f"<{item['name']}>") for item in container["env"]}
    assert set(env) <= ENV_VARS, set(env) - ENV_VARS
    settings = Settings.from_env(env)
    assert settings.store == "rocksdb://"
    assert spec["replicas"] <= settings.partitions
    # A claim per pod, mounted where the worker keeps its tables.
    (claim,) = spec["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == settings.data_dir
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and ports[get["port"]] == settings.web_port, probe
    resources = container["resources"]
    assert set(resources["limits"]) == set(resources["requests"]) == {"cpu", "memory"}
    # The image's user, which owns the data directory in the image.
    uid = re.search(r"--uid (\d+)", (DOCKER / "Dockerfile").read_text()).group(1)  # type: ignore[union-attr]
    assert pod["securityContext"]["runAsUser"] == pod["securityContext"]["fsGroup"] == int(uid)
    # The headless Service that gives Prometheus every pod, ready or not.
    assert spec["serviceName"] == service["metadata"]["name"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    labels = spec["template"]["metadata"]["labels"]
    assert service["spec"]["selector"] == spec["selector"]["matchLabels"] == labels
    (metrics,) = service["spec"]["ports"]
    assert ports[metrics["targetPort"]] == metrics["port"] == settings.web_port


def test_the_kubernetes_page_shows_the_manifest_as_it_is():
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    (block,) = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    shown = list(yaml.safe_load_all(block))
    assert shown == list(
        yaml.safe_load_all((DOCKER / "k8s" / "worker-statefulset.yaml").read_text())
    )


def test_the_compose_file_is_what_the_deployment_page_runs():
    text = (ROOT / "docs" / "deployment.md").read_text()
    compose = _compose()
    for name in compose["services"]:
        assert f"`{name}`" in text, f"docs/deployment.md does not mention the service {name}"
    for command in re.findall(r"docker compose -f (\S+)", text):
        assert (ROOT / command).is_file(), command
