"""`curvmem evaluate batch`: one process, one model load, the same files as one command each."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import smoke_lm
from curvmem.cli import main
from curvmem.io import read_cost


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke world, its model (4 steps) and an edit that zeroes one gate_proj."""
    from curvmem.model import load_model, mlp_modules, model_fingerprint
    from curvmem.schema import write_edit

    root = tmp_path_factory.mktemp("batch")
    w, _, m = smoke_lm(root)
    model = load_model(m)
    mod = mlp_modules(model, [1], ["mlp.gate_proj"])[0]
    edit = root / "zero.safetensors"
    write_edit(edit, {mod.param_name: torch.zeros_like(mod.module.weight)},
               {"method": "kfac", "spec": {"layers": [1]},
                "model_fingerprint": model_fingerprint(model)})
    return root, w, m, edit


def _runs(w, d, coherence: bool):
    runs = [("memorization", w / "canaries_forget.jsonl", d / "memorization_forget.json"),
            ("memorization", w / "canaries_control.jsonl", d / "memorization_control.json"),
            ("perplexity", w / "heldout.jsonl", d / "perplexity.json"),
            ("tasks", w / "tasks.jsonl", d / "tasks.json")]
    if coherence:  # listed last: the batch must still run it on the unedited weights
        runs.append(("coherence", w / "heldout.jsonl", d / "coherence.json"))
    return runs


@pytest.mark.parametrize("edited", [False, True])
def test_batch_writes_what_each_command_writes(smoke, edited):
    root, w, m, edit = smoke
    extra = ["--edit", str(edit)] if edited else []
    one, batch = root / f"one-{edited}", root / f"batch-{edited}"
    for kind, data, out in _runs(w, one, edited):
        assert main(["evaluate", kind, "--model", str(m), *extra, "--data", str(data),
                     "--out", str(out)]) == 0
    runs = [a for kind, data, out in _runs(w, batch, edited)
            for a in ("--run", kind, str(data), str(out))]
    assert main(["evaluate", "batch", "--model", str(m), *extra, *runs]) == 0
    for _, _, out in _runs(w, one, edited):
        twin = batch / out.name
        assert twin.read_bytes() == out.read_bytes()  # its cost is in its cost file
        assert read_cost(twin)["shared_load_seconds"] >= 0 and read_cost(out)["seconds"] > 0
    if edited:  # the edit really changed what the batch measured after coherence restored it
        coh = json.loads((batch / "coherence.json").read_text())
        assert coh["ndcg10"] < 1 and coh["edit"]["method"] == "kfac"


def test_batch_bad_inputs_write_nothing(smoke, capsys):
    root, w, m, edit = smoke
    out = root / "bad"
    cases = [
        (["--run", "perplexity", str(w / "heldout.jsonl"), str(out / "a.json"),
          "--run", "tasks", str(w / "tasks.jsonl"), str(out / "a.json")], "same file"),
        (["--run", "spelling", str(w / "heldout.jsonl"), str(out / "a.json")],
         "unknown evaluation kind"),
        (["--run", "coherence", str(w / "heldout.jsonl"), str(out / "a.json")], "give --edit"),
        (["--run", "perplexity", str(w / "heldout.jsonl"), str(out / "a.json"),
          "--run", "tasks", str(w / "heldout.jsonl"), str(out / "b.json")], "missing field"),
        (["--run", "perplexity", str(w / "heldout.jsonl"), str(out / "a.txt")], "--out must be"),
    ]
    for args, message in cases:
        assert main(["evaluate", "batch", "--model", str(m), *args]) == 2
        assert message in capsys.readouterr().err
    assert not out.exists()  # every input is checked before anything runs or is written
