"""The task layer: one module per task kind, the only code that branches on the task."""

import ast
import re
import typing
from pathlib import Path

import numpy as np
import pytest

from contract.catalog import Task as TaskName
from contract.paths import ROOT
from contract.tasks import TASKS, Task, get_task
from tests.conftest import CATALOG

BRANCH = re.compile(r"task ==|\.task in|task !=|task not in")


def test_every_task_kind_of_the_catalog_has_a_module() -> None:
    assert sorted(TASKS) == sorted(typing.get_args(TaskName))
    assert {spec.task for spec in CATALOG.values()} <= set(TASKS)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_each_task_module_provides_the_whole_protocol(name: str) -> None:
    module = TASKS[name]
    constants = set(typing.get_type_hints(Task))
    functions = {m for m in dir(Task) if callable(getattr(Task, m)) and not m.startswith("_")}
    missing = sorted(m for m in constants | functions if not hasattr(module, m))
    assert not missing, f"contract/tasks/{name}.py lacks {missing}"
    assert all(callable(getattr(module, f)) for f in functions)
    assert module.NATIVE in typing.get_args(typing.get_type_hints(Task)["NATIVE"])


def test_nothing_outside_the_task_layer_branches_on_the_task() -> None:
    """What a task kind means lives in contract/tasks/ alone (the issue's grep, as a test)."""
    found = []
    for folder in ("contract", "pipelines", "services"):
        for path in (ROOT / folder).rglob("*.py"):
            if ".venv" in path.parts or path.is_relative_to(ROOT / "contract" / "tasks"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if BRANCH.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            modules.add(node.module)
            modules |= {f"{node.module}.{alias.name}" for alias in node.names}
    return modules


def test_the_contract_imports_neither_training_nor_serving() -> None:
    for path in (ROOT / "contract").rglob("*.py"):
        wrong = {m for m in imported_modules(path) if m.split(".")[0] in ("pipelines", "services")}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_services_import_no_training_code() -> None:
    for path in (ROOT / "services").rglob("*.py"):
        if ".venv" in path.parts:
            continue
        wrong = {m for m in imported_modules(path) if m.split(".")[0] == "pipelines"}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


def test_the_request_path_imports_no_tooling() -> None:
    """What the containers run (services/*.py, api/, drift/) leaves services/tools/ out: the
    stack, the demo, the generators, the benchmark and the load test are not on a request's
    path."""
    served = [*(ROOT / "services").glob("*.py"), *(ROOT / "services" / "api").rglob("*.py")]
    for path in [*served, *(ROOT / "services" / "drift").rglob("*.py")]:
        wrong = {m for m in imported_modules(path) if m.startswith("services.tools")}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_labels_and_class_names_agree(key: str) -> None:
    """A task that serves labels names them (or finds them: segments), one that does not
    refuses to decide."""
    spec = CATALOG[key]
    task = get_task(spec.task)
    assert spec.task_kind is task and spec.class_names == task.class_names(spec)
    if not task.LABELS_SERVED:
        with pytest.raises(TypeError):
            task.labels(np.zeros((2, 2)), None)


def test_a_catalog_entry_is_validated_by_its_task() -> None:
    entry = CATALOG["titanic"].model_dump(exclude={"key"})
    entry["target"] = entry["target"] | {"positive": None}
    with pytest.raises(ValueError, match=r"a binary task needs target\.positive"):
        type(CATALOG["titanic"])(key="titanic", **entry)
