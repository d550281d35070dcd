"""What an API server demands of labels and annotations, and what the k8s Prometheus needs of
the pods it scrapes: checks on built objects (plain dicts), shared by tests/unit/test_k8s*.py.

The syntax is k8s.io/apimachinery's (util/validation: IsQualifiedName, IsValidLabelValue,
ValidateAnnotations). The OpenAPI schemas type labels and annotations as map[string]string
only, so kubernetes-validate and kubectl's client-side validation pass a malformed one that
`kubectl apply` then gets rejected by the API server.
"""

import re
from collections.abc import Iterator
from typing import Any

_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
ANNOTATIONS_MAX_BYTES = 256 * 1024
# maps whose keys are qualified names and values label values, wherever they sit in an object
# (metadata, pod templates, selectors of workloads, PDBs and NetworkPolicy peers, nodeSelector)
LABEL_MAPS = ("labels", "matchLabels", "nodeSelector")
SCRAPE = "prometheus.io/"


def qualified_name_problems(key: Any) -> list[str]:
    """Why `key` is not a label or annotation key ([prefix/]name); [] when it is one."""
    if not isinstance(key, str):
        return [f"key {key!r} is not a string"]
    prefix, slash, name = key.rpartition("/")
    problems = []
    if slash and not (0 < len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)):
        problems.append(f"key {key!r}: prefix is not a DNS-1123 subdomain of <= 253 chars")
    if not (len(name) <= 63 and _NAME.fullmatch(name)):
        problems.append(f"key {key!r}: name is not <= 63 alphanumerics, '-', '_', '.'")
    return problems


def label_value_problems(value: Any) -> list[str]:
    """Why `value` is not a label value; [] when it is one (the empty string is)."""
    if not isinstance(value, str):
        return [f"value {value!r} is not a string"]
    if len(value) > 63 or not _LABEL_VALUE.fullmatch(value):
        return [f"value {value!r} is not <= 63 alphanumerics, '-', '_', '.'"]
    return []


def label_problems(labels: dict[Any, Any]) -> list[str]:
    return [
        problem
        for key, value in labels.items()
        for problem in qualified_name_problems(key) + label_value_problems(value)
    ]


def annotation_problems(annotations: dict[Any, Any]) -> list[str]:
    problems = [p for key in annotations for p in qualified_name_problems(key)]
    problems += [
        f"key {key!r}: value {value!r} is not a string"
        for key, value in annotations.items()
        if not isinstance(value, str)
    ]
    size = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_MAX_BYTES:
        problems.append(f"annotations total {size} bytes > {ANNOTATIONS_MAX_BYTES}")
    return problems


def _maps(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every (path, map) of labels or annotations in an object, at any depth."""
    if isinstance(node, list):
        for index, item in enumerate(node):
            yield from _maps(item, f"{path}[{index}]")
        return
    if not isinstance(node, dict):
        return
    for key, value in node.items():
        here = f"{path}.{key}"
        annotations = key == "annotations" and path.endswith("metadata")
        if (key in LABEL_MAPS or annotations) and isinstance(value, dict):
            yield here, value
        else:
            yield from _maps(value, here)


def metadata_problems(obj: dict[str, Any]) -> list[str]:
    """Every label and annotation in `obj` an API server would reject, as `path: why`."""
    maps = list(_maps(obj, ""))
    if obj.get("kind") == "Service":  # a Service's selector is a bare label map
        maps.append((".spec.selector", obj.get("spec", {}).get("selector") or {}))
    return [
        f"{path}: {problem}"
        for path, found in maps
        for problem in (
            annotation_problems(found) if path.endswith("annotations") else label_problems(found)
        )
    ]


def scrape_problems(workload: dict[str, Any]) -> list[str]:
    """What the k8s Prometheus' pod jobs miss on a workload's pod template: the
    prometheus.io/scrape, port (one of the pod's containerPorts) and path annotations."""
    template = workload["spec"]["template"]
    annotations = template["metadata"].get("annotations") or {}
    ports = {
        str(port["containerPort"])
        for container in template["spec"]["containers"]
        for port in container.get("ports", [])
    }
    problems = []
    if annotations.get(SCRAPE + "scrape") != "true":
        problems.append(f'{SCRAPE}scrape is not "true"')
    if annotations.get(SCRAPE + "port") not in ports:
        problems.append(f"{SCRAPE}port is not one of the containerPorts {sorted(ports)}")
    if annotations.get(SCRAPE + "path") != "/metrics":
        problems.append(f"{SCRAPE}path is not /metrics")
    return problems
