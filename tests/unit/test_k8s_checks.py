"""tests/k8s_checks.py: Kubernetes' label and annotation syntax, and that the checks reject the
objects k8s/base/models.yaml once held (annotations swallowed into a comment)."""

from typing import Any

import pytest
import yaml

from tests.k8s_checks import (
    label_value_problems,
    metadata_problems,
    qualified_name_problems,
    scrape_problems,
)

# A model Deployment's pod template as infra/deploy/k8s-models.yaml.j2 rendered it: the
# `annotations:` key at the end of the comment, its entries parsed as labels
SWALLOWED = """
metadata:
  labels:
    app.kubernetes.io/name: titanic
    app.kubernetes.io/component: model-service
    mlops.reference/model: titanic
    mlops.reference/state-client: "true"  # MLflow, Postgres (prediction log), Redis      annotations:
    prometheus.io/scrape: "true"
    prometheus.io/port: "8100"
    prometheus.io/path: /metrics
spec:
  containers:
    - name: service
      ports:
        - {name: http, containerPort: 8100}
"""  # noqa: E501 (the line as it was rendered)


def deployment(template: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "Deployment", "metadata": {"name": "titanic"}, "spec": {"template": template}}


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("app", True),
        ("app.kubernetes.io/name", True),
        ("nvidia.com/gpu.present", True),
        ("a_b.c-d", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("x" * 254 + "/name", False),
        ("Example.com/name", False),  # the prefix is lower-case DNS
        ("/name", False),
        ("a/b/c", False),
        ("-name", False),
        ("name.", False),
        ("", False),
        (True, False),
    ],
)
def test_qualified_names(key: Any, valid: bool) -> None:
    assert (qualified_name_problems(key) == []) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("", True),
        ("model-service", True),
        ("house_prices", True),
        ("v1.2", True),
        ("x" * 63, True),
        ("x" * 64, False),
        ("/metrics", False),
        ("a b", False),
        ("_a", False),
        ("a.", False),
        (8100, False),
    ],
)
def test_label_values(value: Any, valid: bool) -> None:
    assert (label_value_problems(value) == []) is valid


def test_the_checks_reject_the_swallowed_annotations() -> None:
    broken = deployment(yaml.safe_load(SWALLOWED))
    problems = metadata_problems(broken)
    assert problems == [
        ".spec.template.metadata.labels: value '/metrics' is not <= 63 alphanumerics, '-', '_', '.'"
    ]
    assert len(scrape_problems(broken)) == 3  # scrape, port and path: none is an annotation


def test_the_checks_pass_the_annotations_in_place() -> None:
    template = yaml.safe_load(SWALLOWED)
    labels = template["metadata"]["labels"]
    template["metadata"]["annotations"] = {
        key: labels.pop(key) for key in list(labels) if key.startswith("prometheus.io/")
    }
    assert metadata_problems(deployment(template)) == []
    assert scrape_problems(deployment(template)) == []


def test_annotation_values_are_strings_and_services_select_by_labels() -> None:
    annotated = deployment({"metadata": {"annotations": {"prometheus.io/port": 8100}}})
    assert metadata_problems(annotated) == [
        ".spec.template.metadata.annotations: key 'prometheus.io/port': value 8100 is not a string"
    ]
    service = {"kind": "Service", "metadata": {"name": "s"}, "spec": {"selector": {"a": "/x"}}}
    assert metadata_problems(service) != []
