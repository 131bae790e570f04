"""`curvmem export`: base + K-FAC edit -> a checkpoint that loads without curvmem and gives the
logits of base + `curvmem.edit.apply`; bad inputs fail before anything is written."""

from __future__ import annotations

import argparse
import hashlib
import json

import pytest
import torch

from conftest import tiny_olmo2
from curvmem import edit, schema
from curvmem.cli import export as export_cli
from curvmem.model import lm as lm_model
from test_edit import make_eigen_dir

torch.set_num_threads(1)


def run_cli(*argv) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    export_cli.register(sub, sub.add_parser("evaluate").add_subparsers())
    args = parser.parse_args([str(a) for a in argv])
    args.func(args)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny random OLMo-2 with a tokenizer beside it, and a K-FAC edit of layer 1 (gate+up)."""
    from transformers import AutoTokenizer

    tmp = tmp_path_factory.mktemp("export")
    corpus = tmp / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"the river {i} ran past the old mill"}) + "\n"
                              for i in range(40)))
    lm_model.train_tokenizer(corpus, tmp / "tok", 300)
    tok = AutoTokenizer.from_pretrained(tmp / "tok")
    model = tiny_olmo2(vocab=len(tok))
    model.save_pretrained(tmp / "base")
    tok.save_pretrained(tmp / "base")
    eigen_dir = make_eigen_dir(model, tmp, [1])
    tensors, meta = edit.build_edit(model, {1: {"mlp.gate_proj": 0.6, "mlp.up_proj": 0.6}},
                                    eigen_dir=eigen_dir)
    schema.write_edit(tmp / "kfac.safetensors", tensors, meta)
    return tmp


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_exported_checkpoint_gives_base_plus_apply_logits(base, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "exported"
    run_cli("export", "--model", base / "base", "--edit", base / "kfac.safetensors",
            "--out", out)
    exported = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = AutoModelForCausalLM.from_pretrained(base / "base").eval()
    ids = torch.randint(0, 61, (3, 12), generator=torch.Generator().manual_seed(2))
    before = logits(reference, ids)
    edit.apply(reference, base / "kfac.safetensors")
    assert torch.equal(logits(exported, ids), logits(reference, ids))
    assert not torch.allclose(before, logits(reference, ids))  # the edit changes the model
    assert exported.dtype == torch.float32  # the base checkpoint's own dtype

    note = json.loads((out / "config.json").read_text())["curvmem_edit"]
    assert note["method"] == "kfac" and note["spec"] == {"1": {"mlp.gate_proj": 0.6,
                                                               "mlp.up_proj": 0.6}}
    sha = hashlib.sha256((base / "kfac.safetensors").read_bytes()).hexdigest()
    assert note["edit_sha256"] == sha
    assert exported.config.curvmem_edit["edit_sha256"] == sha
    assert json.loads((out / "curvmem_edit.json").read_text())["method"] == "kfac"
    # the tokenizer found beside the model came along
    assert AutoTokenizer.from_pretrained(out).get_vocab() == \
        AutoTokenizer.from_pretrained(base / "tok").get_vocab()
    assert not list(tmp_path.glob(".*.tmp"))


def test_export_in_bfloat16_with_an_explicit_tokenizer(base, tmp_path):
    from transformers import AutoModelForCausalLM

    out = tmp_path / "bf16"
    out.mkdir()  # an empty directory may be the target
    run_cli("export", "--model", base / "base", "--edit", base / "kfac.safetensors",
            "--out", out, "--tokenizer", base / "tok", "--dtype", "bfloat16")
    exported = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert exported.dtype == torch.bfloat16
    assert (out / "tokenizer.json").is_file()


def test_bad_inputs_fail_before_writing(base, tmp_path):
    other = tmp_path / "other"
    tiny_olmo2(vocab=300, seed=1).save_pretrained(other)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cases = [
        (["--model", base / "base", "--edit", tmp_path / "missing.safetensors"], "no such file"),
        (["--model", other, "--edit", base / "kfac.safetensors"], "fingerprint"),
        (["--model", base / "base", "--edit", base / "kfac.safetensors", "--tokenizer",
          tmp_path], "no tokenizer"),
    ]
    for argv, words in cases:
        with pytest.raises(ValueError, match=words):
            run_cli("export", *argv, "--out", tmp_path / "new")
        assert not (tmp_path / "new").exists()
    with pytest.raises(ValueError, match="not an empty directory"):
        run_cli("export", "--model", base / "base", "--edit", base / "kfac.safetensors",
                "--out", full)
    assert [p.name for p in full.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "other"]
