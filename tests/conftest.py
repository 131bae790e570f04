"""Shared fixtures: tiny random models of each supported family (CPU, seconds). Each helper
imports torch itself, so this file stays light for the small suites test_conftest.py runs.

The suite runs on two workers (`python -m pytest -n 2 --dist loadgroup`, pytest-xdist). Tests
that must share one worker carry `@pytest.mark.xdist_group(NAME)`:
- "smoke-and-slurm": tests reading the smoke DAG run that `slurm_cluster.smoke_run()` makes once
  per process (in one worker it is made once), and the tests that start the one-node SLURM
  cluster, which writes /etc/slurm and must never run twice at once; test_slurm's test is both.
- "harness-registry": test_harness_tasks.py, whose module fixture indexes lm_eval's tasks.
Everything else writes only under its own tmp_path (per worker) and may run side by side.
On workers that would not keep a group together (another --dist; a pytest whose node ids
pytest-xdist cannot tag, as pytest 9.2 with pytest-xdist 3.8) the grouped tests fail in setup.

Under CI (the environment variable CI set, as `.ci/run` is run), a test skipped because a
package it imports is missing fails instead: `pip install -e ".[test]"` installs every such
package, so a skip there would hide a missing install step.
"""

from __future__ import annotations

import os

import pytest

# OpenMP threads that wait by spinning hold a core that another process (the other worker, a
# workflow job) needs: on this 2-core machine, with another job running, two workers ran
# test_evaluate_batch.py's two tests in about 50 s each spinning and 4 s waiting passively. Set
# before torch is imported (the OpenMP runtime reads it once); the workflow's jobs inherit it.
# It changes how threads wait, never what they compute.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def in_ci(environ=os.environ) -> bool:
    """Whether this is a CI run: CI set to anything but empty, 0 or false."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false")


IN_CI = in_ci()


def _missing_package(longrepr) -> str | None:
    """The message of a skip that pytest.importorskip raised, or None for any other skip."""
    message = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else ""
    return message if "could not import" in message else None


def _fail_under_ci(report) -> None:
    message = _missing_package(report.longrepr) if IN_CI and report.skipped else None
    if message:
        path, line, _ = report.longrepr
        report.outcome = "failed"
        report.longrepr = (f"{path}:{line}: {message.removeprefix('Skipped: ')}; under CI "
                           "every test package is installed (pip install -e \".[test]\")")


GROUPING_ERROR = pytest.StashKey[str]()


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """On an xdist worker: every test of an xdist_group must carry its group's tag (by which the
    scheduler keeps the group on one worker); if not, those tests fail in setup, before any of
    them touches what they share."""
    grouped = [item for item in items if item.get_closest_marker("xdist_group")]
    if not hasattr(config, "workerinput") or not grouped:
        return  # one process: nothing runs side by side
    if not config.getvalue("loadgroup"):  # pytest-xdist sets it on its workers
        config.stash[GROUPING_ERROR] = ("run with --dist loadgroup: the xdist_group tests must "
                                        "share a worker (tests/conftest.py)")
    elif untagged := [item.nodeid for item in grouped if "@" not in item.nodeid]:
        import xdist

        config.stash[GROUPING_ERROR] = (
            f"--dist loadgroup does not group with pytest {pytest.__version__} and pytest-xdist "
            f"{xdist.__version__} ({untagged[0]} has no @group tag), so tests that must not run "
            "side by side could: install the versions pyproject.toml's test extra allows")


def pytest_runtest_setup(item):
    error = item.config.stash.get(GROUPING_ERROR, None)
    if error and item.get_closest_marker("xdist_group"):
        pytest.fail(error, pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A module-level importorskip (the module's tests never collected) fails under CI."""
    outcome = yield
    _fail_under_ci(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """An importorskip inside a test or fixture fails under CI."""
    outcome = yield
    _fail_under_ci(outcome.get_result())


def tiny_olmo2(layers: int = 3, d: int = 16, ff: int = 24, vocab: int = 61, seed: int = 0):
    import torch
    from transformers import Olmo2Config, Olmo2ForCausalLM

    torch.manual_seed(seed)
    cfg = Olmo2Config(vocab_size=vocab, hidden_size=d, intermediate_size=ff,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                      max_position_embeddings=64, pad_token_id=None, bos_token_id=None,
                      eos_token_id=0)
    return Olmo2ForCausalLM(cfg).eval()


def tiny_gpt2(layers: int = 3, d: int = 16, vocab: int = 61, seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=vocab, n_embd=d, n_layer=layers, n_head=2, n_positions=64,
                     n_inner=24, bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg).eval()


def tiny_neox(layers: int = 3, d: int = 16, vocab: int = 61, seed: int = 0):
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    torch.manual_seed(seed)
    cfg = GPTNeoXConfig(vocab_size=vocab, hidden_size=d, intermediate_size=24,
                        num_hidden_layers=layers, num_attention_heads=2,
                        max_position_embeddings=64, bos_token_id=0, eos_token_id=0, hidden_dropout=0.0, attention_dropout=0.0)
    return GPTNeoXForCausalLM(cfg).eval()


FAMILIES = {"olmo2": tiny_olmo2, "gpt2": tiny_gpt2, "neox": tiny_neox}


@pytest.fixture(params=sorted(FAMILIES))
def tiny_lm(request):
    return request.param, FAMILIES[request.param]()


@pytest.fixture
def token_batches():
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 61, (6, 12), generator=g)


def smoke_lm(root, steps: int = 4):
    """The smoke world, its tokenizer and its LM trained `steps` steps, by the CLI, under root:
    (world dir, tokenizer dir, model dir)."""
    from curvmem.cli import main

    w, tok, m = root / "world", root / "tok", root / "model"
    assert main(["world", "--out", str(w), "--preset", "smoke"]) == 0
    assert main(["tokenizer", "--corpus", str(w / "train.jsonl"), "--out", str(tok),
                 "--vocab-size", "400"]) == 0
    assert main(["train-lm", "--world", str(w), "--tokenizer", str(tok), "--out", str(m),
                 "--preset", "smoke", "--steps", str(steps)]) == 0
    return w, tok, m
