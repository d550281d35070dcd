"""docker-compose.yml, the Dockerfile and the proxy's config, checked by tools (no Docker
engine here): the Compose specification's schema, docker-compose's own parser, hadolint,
nginx -t, promtool and amtool; and by the rules a fresh `docker compose up` depends on."""

import hashlib
import re
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.paths import ROOT
from services.tools import deploy
from services.tools.stack import plan
from tests.conftest import CATALOG, KEYS
from tests.unit.test_alertmanager import amtool
from tests.unit.test_prometheus import promtool

BIN = Path(sys.executable).parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"


def tool(name: str) -> str:
    """A checker from the locked environment or the Debian packages `make setup` installs."""
    found = shutil.which(name, path=f"{BIN}:/usr/sbin:/usr/bin:/bin")
    assert found, f"{name} is missing: run `make setup`"
    return found


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return loaded


def services() -> dict[str, Any]:
    return dict(compose()["services"])


def documented() -> set[str]:
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE.read_text(), re.M))


@pytest.mark.lint
def test_generated_files_are_up_to_date() -> None:
    stale = deploy.stale(deploy.outputs())
    assert stale == [], f"run `make manifests`: {[str(p.relative_to(ROOT)) for p in stale]}"


def test_compose_file_follows_the_compose_specification() -> None:
    checked = subprocess.run(
        [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("profile", ["cpu", "gpu"])
def test_docker_compose_config_accepts_it_with_the_example_env(profile: str) -> None:
    """docker-compose's own parser: interpolation, anchors, depends_on, profiles."""
    checked = subprocess.run(
        [tool("docker-compose"), "--env-file", str(ENV_EXAMPLE), "config"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "COMPOSE_PROFILES": profile},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    assert "services" in yaml.safe_load(checked.stdout)


def test_compose_refuses_to_start_on_the_example_values(tmp_path: Path) -> None:
    """The `secrets` service runs first; with .env.example's values its own command (run here
    on the environment docker-compose resolves for it) exits 1 naming each secret."""
    checked = subprocess.run(
        [tool("docker-compose"), "--env-file", str(ENV_EXAMPLE), "config"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    resolved = yaml.safe_load(checked.stdout)["services"]
    check = resolved["secrets"]
    secrets = {"POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD",
               "PREDICTIONS_WRITER_PASSWORD", "PREDICTIONS_DRIFT_PASSWORD",
               "MLFLOW_ADMIN_PASSWORD", "MLFLOW_READER_PASSWORD", "MLFLOW_SECRET_KEY",
               "ADMIN_TOKEN", "WEBHOOK_TOKEN", "FEEDBACK_TOKEN"}  # fmt: skip
    assert set(check["environment"]) == secrets and secrets <= set(check["command"])
    command = [sys.executable, *check["command"][1:]]
    refused = subprocess.run(
        command, capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **check["environment"]},
    )  # fmt: skip
    assert refused.returncode == 1, refused.stdout + refused.stderr
    for name in secrets:
        assert f"{name} holds the example value" in refused.stderr
    # real values pass, and the webhook token is written for Alertmanager (its user's, 0400)
    target = tmp_path / "webhook-token"
    real = {name: f"{name.lower()}-{'x' * 16}" for name in secrets}
    command = [arg.replace("/secrets/webhook-token", str(target)) for arg in command]
    passed = subprocess.run(
        command, capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **real},
    )  # fmt: skip
    assert passed.returncode == 0, passed.stderr
    assert target.read_text() == real["WEBHOOK_TOKEN"] and target.stat().st_mode & 0o777 == 0o400
    assert check["user"] == "65534:65534"  # Alertmanager's user (both images run as nobody)
    # the stores and the programs not of this project start after the check; every other
    # service waits for one of the stores
    for name in ("postgres", "minio", "alertmanager", "grafana"):
        assert resolved[name]["depends_on"]["secrets"]["condition"] == (
            "service_completed_successfully"
        ), name


def test_the_deploy_tiers_override_parses_over_it(tmp_path: Path) -> None:
    """tests/deploy/compose.test.yml, as the deploy tier hands it to docker-compose (a YAML
    slip there only showed after the images were built, minutes into that tier)."""
    params = tmp_path / "params.yaml"
    params.write_text("{}")
    checked = subprocess.run(
        [tool("docker-compose"), "--env-file", str(ENV_EXAMPLE), "-f", "docker-compose.yml",
         "-f", "tests/deploy/compose.test.yml", "config"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "DEPLOY_TEST_PARAMS": str(params)},
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr
    services = yaml.safe_load(checked.stdout)["services"]
    for name in ("trainer", "drift"):
        assert f"{params}:/app/params.yaml:ro" in services[name]["volumes"]
    assert services["grafana"]["profiles"] == ["grafana-not-in-test"]


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path) -> None:
    (tmp_path / "empty.env").write_text("")
    checked = subprocess.run(
        [tool("docker-compose"), "--env-file", str(tmp_path / "empty.env"), "config", "-q"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert checked.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in checked.stderr


def test_no_credential_is_written_in_the_compose_file() -> None:
    text = COMPOSE_FILE.read_text()
    for name in ("POSTGRES_PASSWORD", "MINIO_ROOT_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        for value in re.findall(rf"^\s*{name}:\s*(\S+)", text, re.M):
            assert value.startswith("${"), f"{name} is written out: {value}"
    assert "change-me" not in text
    # nor in a command line (visible to every process of the host): in the environment only
    for name, service in services().items():
        command = " ".join(map(str, service.get("command", []) or []))
        for secret in ("PASSWORD", "TOKEN", "SECRET"):
            assert f"{secret}}}" not in command, f"{name}'s command carries a {secret}"


def test_every_interpolated_variable_is_documented_or_defaulted() -> None:
    text = COMPOSE_FILE.read_text().replace("$$", "")
    missing = {
        name
        for name, default in re.findall(r"\$\{([A-Z0-9_]+)(:-[^}]*)?", text)
        if not default and name not in documented()
    }
    assert missing == set()


def _pinned(image: str) -> bool:
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag not in ("", "latest")


def test_every_image_is_pinned() -> None:
    for name, service in services().items():
        image = service.get("image", "")
        assert image, f"{name} has no image name"
        assert _pinned(image.replace("${IMAGE_TAG:-0.1.0}", "0.1.0")), f"{name}: {image}"
    assert "IMAGE_TAG" in documented()


def test_named_volumes_are_declared_and_dependencies_exist() -> None:
    declared = set(compose()["volumes"])
    for name, service in services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
            else:
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services(), f"{name} depends on unknown {dependency}"
            target = services()[dependency]
            if condition["condition"] == "service_healthy":
                assert "healthcheck" in target, f"{dependency} has no healthcheck for {name}"
            if condition["condition"] == "service_completed_successfully":
                restart = target.get("restart", "no")
                assert restart == "no", f"one-shot {dependency} must not restart"


def test_long_running_services_have_healthchecks_and_local_only_ports() -> None:
    one_shot = {"secrets", "minio-init", "trainer"}
    for name, service in services().items():
        if name not in one_shot | {"locust"}:
            assert "healthcheck" in service, f"{name} has no healthcheck"
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond localhost"


def test_every_model_has_a_service_a_route_and_a_scrape_target() -> None:
    nginx = (ROOT / "infra" / "proxy" / "nginx.conf").read_text()
    prometheus = (ROOT / "infra" / "compose" / "prometheus.yml").read_text()
    for key in KEYS:
        service = services()[key]
        assert service["command"] == deploy.model_command(key)
        port = service["command"][service["command"].index("--port") + 1]
        assert service["expose"] == [port]
        assert f"http://127.0.0.1:{port}/readyz" in service["healthcheck"]["test"]
        assert deploy.dns(key) in service["networks"]["default"]["aliases"]
        assert f"location /models/{key}/ " in nginx
        assert f"server {deploy.dns(key)}:{port};" in nginx
        assert f"{key}:{port}" in prometheus
        assert service["depends_on"]["trainer"] == {"condition": "service_completed_successfully"}


def _normalised(command: list[str]) -> list[str]:
    """A command without interpreter path, host and port values (which differ by design)."""
    out: list[str] = []
    skip = False
    for i, part in enumerate(command):
        if skip:
            skip = False
            continue
        if part in ("--host", "--port"):
            skip = True
            continue
        if i == 0 or (i > 0 and command[i - 1] == "--chdir"):
            part = Path(part).name  # the interpreter's or Feast's path, the repo's path
        out.append("python" if part.startswith("python") else part)
    return out


def test_compose_runs_the_commands_the_local_stack_runs() -> None:
    local = {p["name"]: _normalised(p["command"]) for p in plan()}
    for key in KEYS:
        assert _normalised(services()[key]["command"]) == local[key]
    assert _normalised(services()["drift"]["command"]) == local["drift"]
    assert _normalised(services()["feast"]["command"]) == local["feast"]
    # the proxy: nginx on the same template (compose mounts infra/proxy/nginx.conf)
    assert local["proxy"][0] == "nginx" and "nginx" in services()["proxy"]["image"]
    assert "./infra/proxy/nginx.conf:/etc/nginx/nginx.conf:ro" in services()["proxy"]["volumes"]
    assert services()["locust"]["command"][:3] == [
        "locust",
        "-f",
        "services/tools/load/locustfile.py",
    ]
    assert (ROOT / "services" / "tools" / "load" / "locustfile.py").exists()


def test_triton_serves_every_triton_model_and_the_gpu_profile_reserves_a_gpu() -> None:
    cpu, gpu = services()["triton"], services()["triton-gpu"]
    assert cpu["profiles"] == ["cpu"] and gpu["profiles"] == ["gpu"]
    # the deploy tier's stand-in (PyTriton) serves the same repositories
    stand_in = yaml.safe_load((ROOT / "tests" / "deploy" / "compose.test.yml").read_text())
    for key in (k for k in KEYS if CATALOG[k].triton is not None):
        assert f"--model-repository=/artifacts/{key}/triton" in cpu["command"]
        assert f"--repository=/artifacts/{key}/triton" in stand_in["services"]["triton"]["command"]
    assert "--model-config-name=gpu" in gpu["command"]
    assert "--model-config-name=gpu" not in cpu["command"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["networks"]["default"]["aliases"] == ["triton"]
    assert "COMPOSE_PROFILES=cpu" in ENV_EXAMPLE.read_text()


def test_the_compose_monitoring_configs_pass_promtool_and_amtool(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "infra" / "compose" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]  # the compose mount
    config["rule_files"] = [str(ROOT / "infra" / "prometheus" / "rules" / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    checked = amtool("check-config", str(ROOT / "infra" / "compose" / "alertmanager.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert (
        "http://drift:8200/alerts" in (ROOT / "infra" / "compose" / "alertmanager.yml").read_text()
    )


def test_the_proxy_config_passes_nginx_t(tmp_path: Path) -> None:
    """nginx resolves upstream names at start: the same template on local addresses."""
    addresses = {
        name: f"127.0.0.1:{18100 + i}" for i, name in enumerate(deploy.service_addresses())
    }
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        deploy.nginx_conf(addresses, "127.0.0.1:18080", str(tmp_path), str(tmp_path / "a.log"), "1")
    )
    checked = subprocess.run(
        [tool("nginx"), "-t", "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "e.log")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stderr


def test_the_proxy_never_buffers_a_body_in_a_file() -> None:
    """Its body buffer is larger than its body limit: a chunked body over the limit gets its
    413 before the buffer fills. At equal sizes a body of 1 MiB chunks filled it first, and
    nginx wrote a temp file its workers may not open: a 500, 8 times in 10 (measured)."""
    conf = (ROOT / "infra" / "proxy" / "nginx.conf").read_text()

    def mib(name: str) -> int:
        match = re.search(rf"^\s*{name} (\d+)m;", conf, re.M)
        assert match, name
        return int(match.group(1))

    assert mib("client_body_buffer_size") > mib("client_max_body_size")


# --- the Dockerfile ---

DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stages() -> dict[str, str]:
    """Each stage's name -> its text."""
    parts = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    return {re.match(r"\S+ AS (\S+)", part).group(1): part for part in parts}  # type: ignore[union-attr]


@pytest.mark.lint
@pytest.mark.parametrize("dockerfile", ["Dockerfile", "infra/triton/Dockerfile"])
def test_dockerfile_passes_hadolint(dockerfile: str) -> None:
    checked = subprocess.run(
        [tool("hadolint"), "--failure-threshold", "info", str(ROOT / dockerfile)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_images_run_as_a_numeric_non_root_user_with_the_locked_dependencies() -> None:
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", DOCKERFILE, re.M)
    assert base and _pinned(base.group(1)) and "slim" in base.group(1)
    builds = [s["build"] for s in services().values() if "build" in s]
    built = {b["target"] for b in builds if b["context"] == "."}
    assert built == {"runtime", "trainer", "load"}
    # NVIDIA's Triton with Pillow (the BLS models'), its own user: triton-server, 1000
    assert {b["context"] for b in builds} == {".", "infra/triton"}
    triton = (ROOT / "infra" / "triton" / "Dockerfile").read_text()
    assert re.search(r"^USER 1000:1000$", triton, re.M) and "pillow==" in triton
    for target in built:
        assert target in stages()
        assert re.search(r"^USER 10001:10001$", stages()[target], re.M), target
    for venv in ("runtime-venv", "trainer-venv", "load-venv"):
        assert "uv sync --frozen --no-dev" in stages()[venv], venv  # the lock, nothing else
    assert "--no-install-package torch" in stages()["runtime-venv"]  # serving runs ONNX
    assert "HEALTHCHECK" in stages()["runtime"]


def test_the_torch_wheel_is_the_one_the_lock_was_made_with() -> None:
    # downloaded or taken from an image (offline builds), the file is checked in one step
    checksum = re.search(r'"([0-9a-f]{64})  /opt/wheels/torch-\S+\.whl"', DOCKERFILE)
    wheel = re.search(r'"[0-9a-f]{64}  (/opt/wheels/torch-\S+\.whl)"', DOCKERFILE)
    assert checksum and wheel
    assert "sha256sum --check --strict" in DOCKERFILE
    assert f'{{ path = "{wheel.group(1)}" }}' in (ROOT / "uv.lock").read_text()
    local = Path(wheel.group(1))
    if local.exists():  # the machine the lock was made on carries the wheel
        assert hashlib.sha256(local.read_bytes()).hexdigest() == checksum.group(1)


def test_the_build_context_leaves_state_and_secrets_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    for path in (".env", ".git", "**/.venv", "mlruns", "data", "run", ".dvc/cache"):
        assert path in ignored
