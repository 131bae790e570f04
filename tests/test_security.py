"""SECURITY.md's promises about model directories and code: a model's own code runs only with
--trust-remote-code, pickled weights are never loaded, and nothing in the package or the
workflow unpickles, evaluates strings or hands a string to a shell."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_olmo2
from curvmem.io import StoreError
from curvmem.model.load import load_model

ROOT = Path(__file__).resolve().parents[1]


def model_with_its_own_code(root: Path) -> tuple[Path, Path]:
    """A model directory whose config maps the Auto classes to a module of its own that, when
    imported, writes a marker file beside the directory."""
    model_dir, marker = root / "model", root / "its-code-ran"
    tiny_olmo2().save_pretrained(model_dir)
    (model_dir / "payload.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import Olmo2Config, Olmo2ForCausalLM\n"
        "class PayloadConfig(Olmo2Config):\n    model_type = 'olmo2'\n"
        "class Payload(Olmo2ForCausalLM):\n    config_class = PayloadConfig\n")
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "payload.PayloadConfig",
                          "AutoModelForCausalLM": "payload.Payload"}
    (model_dir / "config.json").write_text(json.dumps(config))
    return model_dir, marker


def test_a_models_own_code_runs_only_with_trust_remote_code(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir, marker = model_with_its_own_code(tmp_path)
    load_model(model_dir)
    assert not marker.exists()
    load_model(model_dir, trust_remote_code=True)  # the payload is live: asked for, it runs
    assert marker.exists()


def test_the_cli_runs_no_model_code_without_the_flag(tmp_path):
    model_dir, marker = model_with_its_own_code(tmp_path)
    tokens = tmp_path / "tokens.npy"  # token ids: no tokenizer needed
    np.save(tokens, np.arange(400, dtype=np.int64) % 50, allow_pickle=False)
    run = subprocess.run(
        [sys.executable, "-c", "from curvmem.cli import main; raise SystemExit(main())",
         "collect", "--model", str(model_dir), "--data", str(tokens), "--layers", "0",
         "--tokens", "64", "--seq-len", "16", "--out", str(tmp_path / "factors")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "factors/layer_0.nc").is_file()
    assert not marker.exists()


def test_pickled_weights_are_refused_unread(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model_dir = tmp_path / "model"
    model = tiny_olmo2()
    model.save_pretrained(model_dir)
    for weights in model_dir.glob("*.safetensors"):  # the same weights, as a pickle
        weights.unlink()
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")
    with pytest.raises(StoreError, match="cannot load"):
        load_model(model_dir)


# what would run code from data: unpickling, string evaluation, a string handed to a shell
FORBIDDEN = {
    r"\bpickle\b(?!d)": "pickle",
    r"torch\.load\(": "torch.load (unpickles)",
    r"np\.load\((?!.*allow_pickle=False)": "np.load without allow_pickle=False",
    r"(?<![\w.])eval\(": "eval()",
    r"(?<![\w.])exec\(": "exec()",
    r"shell\s*=\s*True": "a subprocess through a shell",
    r"os\.system\(|os\.popen\(": "os.system / os.popen",
    r"trust_remote_code\s*=\s*True": "trust_remote_code switched on",
}


def test_the_package_holds_nothing_that_runs_code_from_data():
    found = []
    for path in sorted((ROOT / "src/curvmem").rglob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if code.strip().startswith(('"', "'")):  # a docstring's or a message's words
                continue
            found += [f"{path.relative_to(ROOT)}:{n}: {what}"
                      for pattern, what in FORBIDDEN.items() if re.search(pattern, code)]
    assert not found, "\n".join(found)


def test_no_rule_or_config_switches_model_code_on():
    texts = [p for pattern in ("Snakefile", "workflow/rules/*.smk", "workflow/config/**/*.yaml",
                               "workflow/schemas/*.yaml", "src/curvmem/plan/*.py")
             for p in ROOT.glob(pattern)]
    assert len(texts) > 10
    assert not [p for p in texts if re.search(r"trust.remote.code", p.read_text())]
