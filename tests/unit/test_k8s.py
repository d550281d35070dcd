"""k8s/: every overlay builds with kustomize, every object validates against the Kubernetes
schemas (kubernetes-validate, strict) and an API server's label and annotation syntax, the
pods Prometheus scrapes carry its annotations, and the objects keep the platform's rules:
probes, resources, non-root read-only containers, autoscaling, disruption budgets, network
policies."""

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from contract.catalog import load_catalog
from contract.paths import ROOT
from services.tools import deploy
from tests.conftest import KEYS
from tests.k8s_checks import SCRAPE, metadata_problems, scrape_problems
from tests.unit.test_compose import _normalised, _pinned, services, tool

OVERLAYS = ("local", "gpu", "production")
WORKLOADS = ("Deployment", "StatefulSet", "Job")


def kustomize() -> list[str]:
    """kustomize itself, or the one built into kubectl (v5 in kubectl >= 1.27)."""
    if found := shutil.which("kustomize"):
        return [found, "build"]
    if found := shutil.which("kubectl"):
        return [found, "kustomize"]
    raise AssertionError("kustomize or kubectl is missing (k8s/README.md: install kubectl)")


@cache
def built(overlay: str) -> tuple[dict[str, Any], ...]:
    """The overlay's objects, built from a copy of k8s/ with the example secrets in place."""
    root = Path(__file__).resolve().parent.parent.parent
    work = Path(f"/tmp/k8s-build-{overlay}-{id(root)}")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(ROOT / "k8s", work)
    local = work / "overlays" / "local"
    shutil.copy(local / "secrets.env.example", local / "secrets.env")
    result = subprocess.run(
        [*kustomize(), str(work / "overlays" / overlay)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)
    assert result.returncode == 0, result.stderr
    return tuple(o for o in yaml.safe_load_all(result.stdout) if o)


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in built(overlay) if o["kind"] == kind}


def pods(overlay: str) -> dict[str, dict[str, Any]]:
    """Every workload's pod spec, by `Kind/name`."""
    return {
        f"{o['kind']}/{o['metadata']['name']}": o["spec"]["template"]["spec"]
        for o in built(overlay)
        if o["kind"] in WORKLOADS
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_the_kubernetes_schemas(
    overlay: str, tmp_path: Path
) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(yaml.safe_dump_all(built(overlay)))
    checked = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(manifest)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    # kubernetes-validate exits 0 whatever it finds: its ERROR lines are the verdict
    problems = [line for line in (checked.stdout + checked.stderr).splitlines() if line.strip()]
    assert checked.returncode == 0 and problems == [], "\n".join(problems)


def test_the_schema_check_rejects_what_kubernetes_would(tmp_path: Path) -> None:
    """The check above is not vacuous: a misspelt field and a mistyped value are errors."""
    good = objects("local", "Deployment")["titanic"]
    misspelt = good | {"spec": good["spec"] | {"replica": 2}}
    mistyped = good | {"spec": good["spec"] | {"revisionHistoryLimit": "three"}}
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(yaml.safe_dump_all([misspelt, mistyped]))
    checked = subprocess.run(
        [tool("kubernetes-validate"), "--strict", "--quiet", str(manifest)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    output = checked.stdout + checked.stderr
    assert "'replica' was unexpected" in output and "'three' is not of type" in output


# kubectl apply --dry-run=client --validate=strict would add nothing offline: even a client
# dry run asks a server for its API groups and OpenAPI document (no cluster here: "failed to
# download openapi"), and neither checks label syntax, which only the API server does.
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_labels_and_annotations_are_what_an_api_server_accepts(overlay: str) -> None:
    problems = [
        f"{o['kind']}/{o['metadata']['name']}{problem}"
        for o in built(overlay)
        for problem in metadata_problems(o)
    ]
    assert problems == [], "\n".join(problems)


def workloads(overlay: str) -> dict[str, dict[str, Any]]:
    """Every workload, by `Kind/name`."""
    return {
        f"{o['kind']}/{o['metadata']['name']}": o for o in built(overlay) if o["kind"] in WORKLOADS
    }


def scraped(overlay: str) -> dict[str, set[str]]:
    """The k8s Prometheus' jobs -> the workloads whose pods each keeps by component label."""
    config = yaml.safe_load((ROOT / "k8s" / "base" / "files" / "prometheus.yml").read_text())
    source = ["__meta_kubernetes_pod_label_app_kubernetes_io_component"]
    regexes = {
        job["job_name"]: rule["regex"]
        for job in config["scrape_configs"]
        for rule in job["relabel_configs"]
        if rule.get("action") == "keep" and rule["source_labels"] == source
    }
    components = {
        name: o["spec"]["template"]["metadata"]["labels"].get("app.kubernetes.io/component", "")
        for name, o in workloads(overlay).items()
    }
    return {
        job: {name for name, component in components.items() if re.fullmatch(regex, component)}
        for job, regex in regexes.items()
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_scraped_pod_carries_the_scrape_annotations(overlay: str) -> None:
    """Prometheus keeps the pods of a job's component, then finds them by their annotations."""
    jobs = scraped(overlay)
    assert all(jobs.values()), jobs  # a job that finds no pod scrapes nothing
    assert {f"Deployment/{deploy.dns(k)}" for k in KEYS} <= jobs["model-services"]
    assert jobs["triton"] == {"Deployment/triton"} and jobs["drift"] == {"Deployment/drift"}
    found = workloads(overlay)
    problems = [
        f"{name}: {problem}"
        for name in sorted(set().union(*jobs.values()))
        for problem in scrape_problems(found[name])
    ]
    assert problems == [], "\n".join(problems)
    # and no pod asks for a scrape that no job makes
    annotated = {
        name
        for name, o in found.items()
        if SCRAPE + "scrape" in (o["spec"]["template"]["metadata"].get("annotations") or {})
    }
    assert annotated <= set().union(*jobs.values())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_containers_are_non_root_read_only_bounded_and_probed(overlay: str) -> None:
    for name, pod in pods(overlay).items():
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] > 0, name
        assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod.get("initContainers", []) + pod["containers"]:
            where = f"{name}/{container['name']}"
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["capabilities"] == {"drop": ["ALL"]}, where
            assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
            assert {"cpu", "memory"} <= set(container["resources"]["limits"]), where
            assert _pinned(container["image"]), where
            if name.startswith("Deployment/") and container in pod["containers"]:
                assert "livenessProbe" in container and "readinessProbe" in container, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_model_has_a_service_an_hpa_and_a_pdb(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    hpas, pdbs = (
        objects(overlay, "HorizontalPodAutoscaler"),
        objects(overlay, "PodDisruptionBudget"),
    )
    for key in KEYS:
        name = deploy.dns(key)
        deployment = deployments[name]
        assert deployment["metadata"]["labels"]["mlops.reference/model"] == key
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == deploy.model_command(key)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert name in objects(overlay, "Service")
        metrics = {m["type"]: m for m in hpas[name]["spec"]["metrics"]}
        assert metrics["Resource"]["resource"]["name"] == "cpu"
        assert metrics["Pods"]["pods"]["metric"]["name"] == "serving_requests_per_second"
        # the measured rating (make load --publish), not a number typed in
        target = metrics["Pods"]["pods"]["target"]["averageValue"]
        assert target == str(deploy.hpa_targets()[key]), (key, target)
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": name}
    if overlay == "production":
        assert all(deployments[deploy.dns(k)]["spec"]["replicas"] >= 2 for k in KEYS)
        assert all(h["spec"]["minReplicas"] >= 2 for h in hpas.values())


def test_k8s_runs_the_commands_compose_and_the_local_stack_run() -> None:
    deployments = objects("local", "Deployment")
    drift = deployments["drift"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert _normalised(drift) == _normalised(services()["drift"]["command"])
    locust = deployments["locust"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert locust == deploy.locust_command("http://proxy:8080") == services()["locust"]["command"]
    feast = deployments["feast"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert feast == services()["feast"]["command"] == deploy.feast_command()
    triton = deployments["triton"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert triton == services()["triton"]["command"] == deploy.triton_command()
    trainer = objects("local", "Job")["trainer"]["spec"]["template"]["spec"]["containers"][0]
    # compose escapes $ as $$
    assert trainer["command"][-1] == services()["trainer"]["command"][-1].replace("$$", "$")


def test_network_policies_let_only_the_proxy_reach_the_model_services() -> None:
    policies = objects("local", "NetworkPolicy")
    assert policies["default-deny-ingress"]["spec"] == {
        "podSelector": {},
        "policyTypes": ["Ingress"],
    }
    allowed = policies["model-services"]["spec"]["ingress"][0]["from"]
    components = {
        peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for peer in allowed
    }
    assert components == {"proxy", "prometheus"}
    state = policies["state"]["spec"]
    assert state["ingress"] == [
        {"from": [{"podSelector": {"matchLabels": {"mlops.reference/state-client": "true"}}}]}
    ]
    # who carries the label: the platform's own services, nothing facing clients
    clients = {
        name
        for name, pod in pods("local").items()
        if pod is not None
        and any(
            o["spec"]["template"]["metadata"]["labels"].get("mlops.reference/state-client")
            for o in built("local")
            if o["kind"] in WORKLOADS and f"{o['kind']}/{o['metadata']['name']}" == name
        )
    }
    assert {"Deployment/proxy", "Deployment/locust", "Deployment/grafana"}.isdisjoint(clients)
    assert {f"Deployment/{deploy.dns(k)}" for k in KEYS} <= clients
    assert {"Deployment/mlflow", "Deployment/drift", "Job/trainer"} <= clients


def test_configmaps_carry_params_and_infra() -> None:
    maps = {name.rsplit("-", 1)[0]: o for name, o in objects("local", "ConfigMap").items()}
    assert maps["params"]["data"]["params.yaml"] == (ROOT / "params.yaml").read_text()
    rules = ROOT / "infra" / "prometheus" / "rules"
    for rule in rules.glob("*.yml"):
        assert maps["prometheus-rules"]["data"][rule.name] == rule.read_text()
    dashboards = ROOT / "infra" / "grafana" / "dashboards"
    assert set(maps["grafana-dashboards"]["data"]) == {p.name for p in dashboards.glob("*.json")}
    assert maps["proxy"]["data"]["nginx.conf"] == deploy.nginx_conf(deploy.service_addresses())


def test_the_k8s_prometheus_config_passes_promtool(tmp_path: Path) -> None:
    from tests.unit.test_prometheus import promtool

    config = yaml.safe_load((ROOT / "k8s" / "base" / "files" / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == [
        "model-services",
        "triton",
        "drift",
    ]  # the job names infra/'s rules and dashboards select on
    for job in config["scrape_configs"]:
        assert job["kubernetes_sd_configs"] == [
            {"role": "pod", "namespaces": {"own_namespace": True}}
        ]
        # Debian's Prometheus is built without Kubernetes discovery (the prom/prometheus
        # image has it): promtool checks the rest, relabelling included, on static targets
        job["static_configs"] = [{"targets": ["127.0.0.1:1"]}]
        del job["kubernetes_sd_configs"]
    config["rule_files"] = [str(ROOT / "infra" / "prometheus" / "rules" / "*.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    checked = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_gpu_overlay_puts_triton_on_a_gpu_with_the_tensorrt_configs() -> None:
    triton = objects("gpu", "Deployment")["triton"]["spec"]["template"]["spec"]
    container = triton["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["args"] == deploy.triton_command(gpu=True)
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in triton[
        "tolerations"
    ]
    cpu = objects("local", "Deployment")["triton"]["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    triton_models = [k for k, s in load_catalog().items() if s.triton is not None]
    assert all(
        f"--model-repository=/artifacts/{k}/triton" in container["args"] for k in triton_models
    )


def test_local_runs_its_state_stores_and_production_points_at_managed_ones() -> None:
    local = objects("local", "StatefulSet") | objects("local", "Deployment")
    production = objects("production", "StatefulSet") | objects("production", "Deployment")
    for store in ("postgres", "redis", "minio"):
        assert store in local and store not in production
    assert "platform-secrets" in {n.rsplit("-", 1)[0] for n in objects("local", "Secret")}
    assert objects("production", "Secret") == {}  # created out of band, never in the repo
    platform = next(
        o for n, o in objects("production", "ConfigMap").items() if n.startswith("platform-")
    )
    assert platform["data"]["POSTGRES_HOST"] != "postgres"
    workspace = objects("production", "PersistentVolumeClaim")["workspace"]
    assert workspace["spec"]["accessModes"] == ["ReadWriteMany"]
    ingress = objects("production", "Ingress")["platform"]
    assert ingress["spec"]["tls"][0]["secretName"] == "mlops-tls"


def test_the_trainer_is_a_job_and_the_namespace_enforces_restricted_pods() -> None:
    job = objects("local", "Job")["trainer"]
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    namespace = objects("local", "Namespace")["mlops"]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    assert {o["metadata"].get("namespace") for o in built("local") if o["kind"] != "Namespace"} == {
        "mlops"
    }
