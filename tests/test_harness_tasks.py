"""Every lm-evaluation-harness task a shipped config names (`lm.harness.tasks` in
workflow/config/**/*.yaml) is in the harness's task registry, checked offline: lm_eval's
TaskManager indexes the YAML task files the package ships and opens no connection (the test
refuses every socket connection while it builds). `curvmem_<category>` names are a config's own
local tasks, written at run time from `lm.harness.local_tasks`, so they need that key instead.
Needs the `[eval]` extra (in `[test]`; under CI a missing one fails, tests/conftest.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lm_eval")
pytestmark = pytest.mark.xdist_group("harness-registry")  # the index, built once

from curvmem.evaluate.harness import TASK_PREFIX  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "workflow" / "config"


def harness_of(config: dict) -> dict:
    return (config.get("lm") or {}).get("harness") or {}


def unregistered(config: dict, registry: set[str]) -> list[str]:
    """The harness task names of `config` that are neither in `registry` nor local tasks the
    config writes itself (`curvmem_<category>` with `local_tasks`)."""
    harness = harness_of(config)
    local = harness.get("local_tasks") is not None
    return [t for t in harness.get("tasks", [])
            if t not in registry and not (local and t.startswith(TASK_PREFIX))]


@pytest.fixture(scope="module")
def registry() -> set[str]:
    """Every task, group and tag name the installed harness knows, indexed with no network."""
    from lm_eval.tasks import TaskManager

    def refuse(*args, **kwargs):
        raise AssertionError(f"the task index opened a connection: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket.socket, "connect_ex", refuse)
        names = set(TaskManager().all_tasks)
    assert len(names) > 1000  # the bundled tasks were indexed, not an empty directory
    return names


def test_every_shipped_configs_harness_task_is_in_the_registry(registry):
    configs = sorted(CONFIGS.rglob("*.yaml"))
    assert configs
    unknown = {}
    for path in configs:
        config = yaml.safe_load(path.read_text()) or {}
        if missing := unregistered(config, registry):
            unknown[str(path.relative_to(CONFIGS.parent.parent))] = missing
    assert not unknown, (f"lm.harness.tasks the installed harness does not know: {unknown} "
                         "(`lm_eval ls tasks` lists its names)")


def test_a_name_the_harness_does_not_know_is_reported(registry):
    config = {"lm": {"harness": {"tasks": ["arc_easy", "arc_eazy", "curvmem_logic"]}}}
    assert unregistered(config, registry) == ["arc_eazy", "curvmem_logic"]
    config["lm"]["harness"]["local_tasks"] = "tasks"  # curvmem_logic is then written locally
    assert unregistered(config, registry) == ["arc_eazy"]
    assert unregistered({"lm": {"data": {}}}, registry) == []  # no harness section: nothing
