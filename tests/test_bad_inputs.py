"""Bad inputs, by class (issue 20): each must end in one clear error naming the file or flag,
exit 2 (exit 1 for the machine's own errors), no traceback, and no result written.

Classes: an artifact that is corrupt, incomplete or used under a name its metadata contradicts;
an output path that cannot be written (found before any computation: the model is never
loaded); values that crash deep inside (token ids, devices, specs, counts); unclear messages
(decode errors, summaries); two processes writing one --out; and the workflow's dry run
(layers the model lacks, a NaN rho).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import tiny_olmo2
from curvmem import io
from curvmem.cli import main
from slurm_cluster import REPO
from test_cli_core import SEQ, word_tokenizer

torch.set_num_threads(1)


def words(n: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(f"w{i}" for i in rng.integers(2, 61, n))


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A tiny OLMo-2 with a word tokenizer, token and text data, and its factors, eigenbasis
    and K-FAC edit, each written by the CLI."""
    root = tmp_path_factory.mktemp("bad_inputs")
    p = {"model": root / "olmo", "tokens": root / "tokens.npy", "texts": root / "texts.jsonl",
         "tasks": root / "tasks.jsonl", "factors": root / "f", "eigen": root / "e",
         "edit": root / "x" / "kfac.safetensors"}
    tiny_olmo2(seed=0).save_pretrained(p["model"])
    word_tokenizer().save_pretrained(p["model"])
    np.save(p["tokens"], np.random.default_rng(0).integers(0, 61, 8 * SEQ))
    p["texts"].write_text("".join(json.dumps({"text": words(40, s)}) + "\n" for s in range(3)))
    p["tasks"].write_text("".join(
        json.dumps({"category": c, "prompt": words(5, i), "answer": "w7"}) + "\n"
        for i, c in enumerate(["logic", "arithmetic"])))
    assert cli(*collect(p, p["factors"])) == 0
    assert cli("eigen", "--factors", p["factors"] / "layer_1.nc",
               "--out", p["eigen"] / "layer_1.nc") == 0
    assert cli(*edit_args(p, p["eigen"], p["edit"])) == 0
    return p


def cli(*args) -> int:
    return main([str(a) for a in args])


def collect(p, out, *extra, data=None):
    return ("collect", "--model", p["model"], "--data", data or p["tokens"], "--layers", "1",
            "--tokens", 8 * SEQ, "--seq-len", SEQ, "--batch-size", 4, *extra, "--out", out)


def edit_args(p, eigen, out, *extra):
    return ("edit", "--model", p["model"], "--eigen", eigen, "--layers", "1", "--modules",
            "mlp.gate_proj,mlp.up_proj", *(extra or ("--rho", "0.6")), "--out", out)


def refused(capsys, argv, want, outputs=(), code=2, model_loaded=None) -> str:
    """Exit `code`, exactly one error line naming `want` (each word), no traceback, nothing at
    `outputs`; with model_loaded=False, the model was never loaded (failed before computing)."""
    capsys.readouterr()
    assert cli(*argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    assert errors[0].startswith(f"curvmem {argv[0]}: error: "), errors[0]
    for w in want:
        assert w in errors[0], (w, errors[0])
    for out in outputs:
        assert not out.exists() or (out.is_dir() and not any(out.iterdir())), out
    if model_loaded is not None:
        assert ("model_ready" in io._STARTUP) == model_loaded
    return errors[0]


def copy_artifact(src, dest):
    """`src` and its checksum sidecar (and an edit's JSON sidecar) at `dest`."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    shutil.copy2(io.checksum_path(src), io.checksum_path(dest))
    if src.suffix == ".safetensors":
        shutil.copy2(src.with_suffix(".json"), dest.with_suffix(".json"))
    return dest


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --------------------------------------------------------------------------- corrupt artifacts


@pytest.mark.parametrize("damage, want", [
    ("truncate", ["is corrupt (sha256", "rule collect"]),
    ("no-checksum", ["is incomplete", "rule collect"]),
    ("flip-byte", ["is corrupt", "`curvmem collect`"]),
])
def test_eigen_refuses_a_damaged_factor_file(made, tmp_path, capsys, damage, want):
    f = copy_artifact(made["factors"] / "layer_1.nc", tmp_path / "f" / "layer_1.nc")
    if damage == "truncate":
        truncate(f)
    elif damage == "no-checksum":
        io.checksum_path(f).unlink()
    else:
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    out = tmp_path / "e" / "layer_1.nc"
    err = refused(capsys, ["eigen", "--factors", f, "--out", out], [str(f), *want], [out])
    assert "delete it and rerun" in err


def test_edit_refuses_a_truncated_eigen_file_naming_rule_eigen(made, tmp_path, capsys):
    e = copy_artifact(made["eigen"] / "layer_1.nc", tmp_path / "e" / "layer_1.nc")
    truncate(e)
    out = tmp_path / "edit.safetensors"
    refused(capsys, edit_args(made, e.parent, out), [str(e), "corrupt", "rule eigen"], [out])


@pytest.mark.parametrize("command", ["memorization", "perplexity"])
def test_evaluations_refuse_a_truncated_edit_naming_rule_edit(made, tmp_path, capsys, command):
    e = copy_artifact(made["edit"], tmp_path / "x" / "e.safetensors")
    truncate(e)
    out = tmp_path / "r.json"
    data = made["texts"]
    extra = []
    if command == "memorization":
        data = tmp_path / "mem.jsonl"
        data.write_text(json.dumps({"prefix": words(8, 1), "suffix": words(4, 2)}) + "\n")
        extra = ["--prefix-len", "8", "--suffix-len", "4"]
    refused(capsys, ["evaluate", command, "--model", made["model"], "--edit", e, "--data", data,
                     *extra, "--out", out], [str(e), "corrupt", "rule edit_evaluate_lm, edit_evaluate_vit or bsn"], [out])


def test_an_edit_without_its_sidecar_is_refused_not_applied_unchecked(made, tmp_path, capsys):
    e = copy_artifact(made["edit"], tmp_path / "x" / "e.safetensors")
    e.with_suffix(".json").unlink()
    out = tmp_path / "r.json"
    refused(capsys, ["evaluate", "perplexity", "--model", made["model"], "--edit", e,
                     "--data", made["texts"], "--out", out], ["sidecar e.json is missing"], [out])


def test_merge_refuses_a_truncated_shard(made, tmp_path, capsys):
    f = copy_artifact(made["factors"] / "layer_1.nc", tmp_path / "s" / "layer_1.nc")
    truncate(f)
    out = tmp_path / "m" / "layer_1.nc"
    refused(capsys, ["merge", f, "--out", out], [str(f), "corrupt"], [out])


def test_a_layer_file_renamed_to_another_layer_is_refused(made, tmp_path, capsys):
    """Silently wrong before: layer 1's eigenbasis used as layer 2's."""
    e = copy_artifact(made["eigen"] / "layer_1.nc", tmp_path / "e" / "layer_2.nc")
    out = tmp_path / "edit.safetensors"
    refused(capsys, ["edit", "--model", made["model"], "--eigen", e.parent, "--layers", "2",
                     "--modules", "mlp.gate_proj", "--rho", "0.6", "--out", out],
            [str(e), "holds layer 1", "not the layer 2"], [out])


def test_eigen_refuses_an_eigen_file_as_factors(made, tmp_path, capsys):
    out = tmp_path / "e2" / "layer_1.nc"
    refused(capsys, ["eigen", "--factors", made["eigen"] / "layer_1.nc", "--out", out],
            ["is a 'eigen' file, expected 'factors'"], [out])


def test_a_corrupt_model_file_is_refused_by_its_checksum(made, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(made["model"], model)
    io.write_checksum(model / "model.safetensors")  # as train-lm writes it
    truncate(model / "model.safetensors")
    out = tmp_path / "f"
    argv = list(collect(made, out))
    argv[argv.index("--model") + 1] = model
    refused(capsys, argv, ["model.safetensors is corrupt", "rule train_lm"], [out])


def test_a_corrupt_model_file_without_checksum_is_one_error(made, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(made["model"], model)
    truncate(model / "model.safetensors")
    out = tmp_path / "r.json"
    refused(capsys, ["evaluate", "perplexity", "--model", model, "--data", made["texts"],
                     "--out", out], [f"--model {model}", "cannot load"], [out])


# --------------------------------------------------------------------------- output paths


def file_in_the_way(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a directory")
    return blocker


@pytest.mark.parametrize("case", ["collect-out-is-file", "collect-parent-is-file",
                                  "eigen-out-is-dir", "edit-out-is-dir", "edit-parent-is-file",
                                  "evaluate-out-is-dir", "batch-run-out-is-dir",
                                  "report-lm-table-is-dir", "world-out-is-file",
                                  "compare-figure-parent-is-file"])
def test_unwritable_outputs_fail_before_any_computation(made, tmp_path, capsys, case):
    blocker = file_in_the_way(tmp_path)
    a_dir = tmp_path / "a_dir.json"
    a_dir.mkdir()
    argv, want = {
        "collect-out-is-file": (collect(made, blocker), ["--out", "a file is in the way"]),
        "collect-parent-is-file": (collect(made, blocker / "f"), ["is a file, not a directory"]),
        "eigen-out-is-dir": (["eigen", "--factors", made["factors"] / "layer_1.nc", "--out",
                              a_dir], ["--out", "is a directory"]),
        "edit-out-is-dir": (edit_args(made, made["eigen"], a_dir), ["is a directory"]),
        "edit-parent-is-file": (edit_args(made, made["eigen"], blocker / "e.safetensors"),
                                ["not a directory"]),
        "evaluate-out-is-dir": (["evaluate", "perplexity", "--model", made["model"], "--data",
                                 made["texts"], "--out", a_dir], ["is a directory"]),
        "batch-run-out-is-dir": (["evaluate", "batch", "--model", made["model"], "--run",
                                  "perplexity", made["texts"], a_dir], ["--run ... OUT"]),
        "report-lm-table-is-dir": (["report-lm", "--entry", f"base={tmp_path}", "--out",
                                    tmp_path / "s.json", "--table", a_dir], ["--table"]),
        "world-out-is-file": (["world", "--out", blocker, "--preset", "smoke"],
                              ["a file is in the way"]),
        "compare-figure-parent-is-file": (["compare", "--summary", tmp_path / "s.json",
                                           "--figure", blocker / "c.png"], ["--figure"]),
    }[case]
    refused(capsys, argv, want, model_loaded=False)
    assert blocker.read_text() == "a file, not a directory" and not any(a_dir.iterdir())


def test_a_read_only_output_directory_fails_before_computing(made, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)],
                      capture_output=True, check=False).returncode != 0:
        pytest.skip("needs root to mount a read-only tmpfs (root ignores chmod)")
    try:
        refused(capsys, collect(made, ro / "f"), ["cannot write", "Read-only"],
                model_loaded=False)
    finally:
        subprocess.run(["umount", str(ro)], check=False)


def test_two_collects_of_one_layer_cannot_both_run(made, tmp_path, capsys):
    """A second process writing the same layer file fails at once; the first is unaffected."""
    out = tmp_path / "f"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from curvmem import io\n"
        f"with io.exclusive({str(out / 'layer_1.nc')!r}):\n"
        "    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused(capsys, collect(made, out), ["--out", "another curvmem process is writing it",
                                             "layer_1.nc"], model_loaded=False)
    finally:
        holder.kill()
        holder.wait()
    # the holder died without cleaning up: its lock went with it
    assert cli(*collect(made, out)) == 0
    assert not list(out.glob(".*.lock"))


def test_collects_of_other_layers_into_one_out_run_side_by_side(made, tmp_path):
    """The workflow collects each layer of a factor set in its own job, into one directory: a job
    writing layer 2 must not stop the one writing layer 1 (it did, when collect locked the whole
    directory: a run with two collect jobs at once failed)."""
    out = tmp_path / "f"
    argv = [str(a) for a in collect(made, out)]
    argv[argv.index("--layers") + 1] = "2"
    holder = subprocess.Popen([sys.executable, "-c", (  # what `curvmem collect --layers 2` locks
        "import time; from contextlib import ExitStack; from curvmem import cli, io\n"
        f"args = cli.build_parser().parse_args({argv!r})\n"
        "with ExitStack() as stack:\n"
        "    for path, flag in cli.locked_paths(args, cli.outputs(args)):\n"
        "        stack.enter_context(io.exclusive(path, flag))\n"
        "    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert cli(*collect(made, out)) == 0
    finally:
        holder.kill()
        holder.wait()
    assert (out / "layer_1.nc").is_file()


# --------------------------------------------------------------------------- values


@pytest.mark.parametrize("extra, want", [
    (["--spec", '{"1": {"mlp.gate_proj": null}}'], ["--spec", "must be a number", "null"]),
    (["--spec", "{1: 0.5"], ["--spec: not valid JSON"]),
    (["--spec", '{"one": {"mlp.gate_proj": 0.5}}'], ["--spec: 'one' is not a layer index"]),
    (["--spec", '{"1": {"mlp.gate_proj": NaN}}'], ["rho must be in (0, 1]", "nan"]),
    (["--rho", "nan"], ["rho must be in (0, 1]"]),
    (["--rho", "0.6", "--device", "bogus"], ["--device bogus: not a device name"]),
])
def test_bad_edit_values(made, tmp_path, capsys, extra, want):
    out = tmp_path / "e.safetensors"
    argv = list(edit_args(made, made["eigen"], out, *extra))
    if "--spec" in extra:  # a spec replaces --layers/--modules
        argv = ["edit", "--model", made["model"], "--eigen", made["eigen"], *extra, "--out", out]
    if "--device" in extra:
        argv = ["eigen", "--factors", made["factors"] / "layer_1.nc", "--device", "bogus",
                "--out", tmp_path / "layer_1.nc"]
        out = tmp_path / "layer_1.nc"
    refused(capsys, argv, want, [out])


@pytest.mark.parametrize("case, want", [
    ("batch-size-0", ["--batch-size must be >= 1, got 0"]),
    ("tokens-negative", ["--tokens must be >= 1"]),
    ("device-bogus", ["--device nonsense:7"]),
    ("token-ids-outside-vocab", ["token ids from", "vocabulary is 0..60"]),
    ("mistyped-model-path", ["--model ./no/such/model: no such directory"]),
    ("model-is-a-file", ["is a file; give the model's directory"]),
])
def test_bad_collect_values(made, tmp_path, capsys, case, want):
    out = tmp_path / "f"
    argv = list(collect(made, out))
    if case == "batch-size-0":
        argv[argv.index("--batch-size") + 1] = 0
    elif case == "tokens-negative":
        argv[argv.index("--tokens") + 1] = -5
    elif case == "device-bogus":
        argv[-2:-2] = ["--device", "nonsense:7"]
    elif case == "token-ids-outside-vocab":
        bad = tmp_path / "bad.npy"
        np.save(bad, np.full(8 * SEQ, 999))
        argv = list(collect(made, out, data=bad))
    elif case == "mistyped-model-path":
        argv[2] = "./no/such/model"
    else:
        argv[2] = made["tokens"]
    refused(capsys, argv, want, [out])


def test_cuda_device_without_cuda(made, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "r.json"
    refused(capsys, ["evaluate", "perplexity", "--model", made["model"], "--device", "cuda",
                     "--data", made["texts"], "--out", out], ["CUDA is not available"], [out])


def test_unknown_task_category_is_refused_not_scored(made, tmp_path, capsys):
    data = tmp_path / "tasks.jsonl"
    data.write_text(made["tasks"].read_text() + json.dumps(
        {"category": "arithmetc", "prompt": "w2 w3", "answer": "w4"}) + "\n")
    out = tmp_path / "t.json"
    refused(capsys, ["evaluate", "tasks", "--model", made["model"], "--data", data, "--out",
                     out], [str(data), "unknown task categories ['arithmetc']"], [out])


def test_non_utf8_data_names_the_file_and_line(made, tmp_path, capsys):
    data = tmp_path / "latin1.jsonl"
    data.write_bytes(json.dumps({"text": "ok"}).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    out = tmp_path / "p.json"
    refused(capsys, ["evaluate", "perplexity", "--model", made["model"], "--data", data,
                     "--out", out], [f"{data}:2: not UTF-8"], [out])


@pytest.mark.parametrize("argv, want", [
    (["evaluate", "perplexity", "--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["evaluate", "tasks", "--threads", "0"], ["--threads must be >= 1"]),
    (["tokenizer", "--vocab-size", "0"], ["--vocab-size must be >= 1"]),
    (["train-lm", "--steps", "0"], ["--steps must be >= 1"]),
    (["train-vit", "--epochs", "0"], ["--epochs must be >= 1"]),
    (["mine", "--stride", "0"], ["--stride must be >= 1"]),
    (["analyze", "stress", "--t", "0"], ["--t must be >= 1"]),
    (["baseline", "bsn", "--epochs", "0"], ["--epochs must be >= 1"]),
])
def test_zero_counts_name_their_flag(made, tmp_path, capsys, argv, want):
    """Caught by flag before any file is read (the other arguments are all valid-looking)."""
    out = tmp_path / "o.json"
    filled = {"evaluate": ["--model", made["model"], "--data", made["texts"], "--out", out],
              "tokenizer": ["--corpus", made["texts"], "--out", tmp_path / "tok"],
              "train-lm": ["--world", tmp_path, "--tokenizer", tmp_path, "--out", tmp_path / "m"],
              "train-vit": ["--data", tmp_path / "d.safetensors", "--out", tmp_path / "v"],
              "mine": ["--model", made["model"], "--data", made["texts"], "--out",
                       tmp_path / "m.jsonl"],
              "analyze": ["--model", made["model"], "--memorized", made["texts"], "--out", out],
              "baseline": ["--model", made["model"], "--forget", made["texts"], "--retain",
                           made["texts"], "--out", tmp_path / "b.safetensors"]}[argv[0]]
    refused(capsys, [*argv, *filled], want, [out], model_loaded=False)


@pytest.mark.parametrize("summary, want", [
    ('{"models": {"base": [1, 2]}}', ["--summary", "each model must be an object"]),
    ('{"models": {"base": {"tasks": 3}}}', ["--summary", "not a summary written by"]),
    ("{not json", ["not valid JSON"]),
    ('[]', ["no base model"]),
])
def test_compare_refuses_malformed_summaries(tmp_path, capsys, summary, want):
    path = tmp_path / "s.json"
    path.write_text(summary)
    fig = tmp_path / "c.png"
    refused(capsys, ["compare", "--summary", path, "--figure", fig], [str(path)] * (
        "no base" not in want[0]) + want, [fig])


def test_export_refuses_a_corrupt_edit(made, tmp_path, capsys):
    e = copy_artifact(made["edit"], tmp_path / "x" / "e.safetensors")
    truncate(e)
    out = tmp_path / "hf"
    refused(capsys, ["export", "--model", made["model"], "--edit", e, "--out", out],
            [str(e), "corrupt"], [out])


def test_spectra_refuses_a_truncated_eigen_file(made, tmp_path, capsys):
    e = copy_artifact(made["eigen"] / "layer_1.nc", tmp_path / "e" / "layer_1.nc")
    truncate(e)
    out = tmp_path / "s.json"
    refused(capsys, ["analyze", "spectra", "--eigen", e.parent, "--layers", "1", "--modules",
                     "mlp.gate_proj", "--out", out], [str(e), "corrupt", "rule eigen"], [out])


# --------------------------------------------------------------------------- flags (issue 34)
# Each was accepted (or a traceback): a --spec silently overriding --layers/--modules/--rho, a
# layer or module given twice, a sequence longer than the model's positions, a seed that no
# random number generator (or HDF5 attribute) takes, one memorized id for two texts, a name
# that is a path.

SPEC = '{"1": {"mlp.gate_proj": 0.6, "mlp.up_proj": 0.6}}'
BIG = 2**64 - 5  # collect: "TypeError: Python int too large to convert to C long" from HDF5


def memorized_twice(tmp_path):
    """A memorized set giving id 'c1' to two different texts."""
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps({"id": i, "kind": "canary", "text": words(40, s)}) + "\n"
                            for s, i in enumerate(["c1", "c2", "c1"])))
    return path


@pytest.mark.parametrize("case, want", [
    ("spec-and-rho", ["--spec gives a value per layer and module: drop --rho"]),
    ("spec-and-other-layers", ["--layers 2 disagrees with --spec", "[1]"]),
    ("spec-and-other-modules", ["--modules mlp.down_proj disagrees with --spec"]),
    ("spec-layer-twice", ["--spec: '1' is given twice"]),
    ("spec-module-twice", ["--spec: 'mlp.up_proj' is given twice"]),
    ("edit-layers-twice", ["--layers: layer 1 is given twice"]),
    ("edit-modules-twice", ["--modules: module mlp.up_proj is given twice"]),
    ("edit-seed-too-big", ["--seed must be in 0..", str(2**64)]),
])
def test_bad_edit_flags(made, tmp_path, capsys, case, want):
    out = tmp_path / "e.safetensors"
    base = ["edit", "--model", made["model"], "--eigen", made["eigen"]]
    extra = {
        "spec-and-rho": ["--spec", SPEC, "--rho", "0.6"],
        "spec-and-other-layers": ["--spec", SPEC, "--layers", "2"],
        "spec-and-other-modules": ["--spec", SPEC, "--layers", "1", "--modules", "mlp.down_proj"],
        "spec-layer-twice": ["--spec", '{"1": {"mlp.gate_proj": 0.6}, "1": {"mlp.up_proj": 0.6}}'],
        "spec-module-twice": ["--spec", '{"1": {"mlp.up_proj": 0.6, "mlp.up_proj": 0.9}}'],
        "edit-layers-twice": ["--layers", "1,1", "--modules", "mlp.up_proj", "--rho", "0.6"],
        "edit-modules-twice": ["--layers", "1", "--modules", "mlp.up_proj,mlp.up_proj", "--rho",
                               "0.6"],
        "edit-seed-too-big": ["--layers", "1", "--modules", "mlp.up_proj", "--rho", "0.6",
                              "--keep", "random", "--seed", str(2**64)],
    }[case]
    refused(capsys, [*base, *extra, "--out", out], want, [out, out.with_suffix(".json")],
            model_loaded=False)


def test_the_workflows_spec_with_its_own_layers_and_modules_is_taken(made, tmp_path):
    """What the plan passes for a value per module: --spec with the same --layers/--modules."""
    out = tmp_path / "e.safetensors"
    assert cli("edit", "--model", made["model"], "--eigen", made["eigen"], "--layers", "1",
               "--modules", "mlp.up_proj,mlp.gate_proj", "--spec", SPEC, "--out", out) == 0


@pytest.mark.parametrize("case, want", [
    ("layers-twice", ["--layers: layer 1 is given twice"]),
    ("modules-twice", ["--modules: module mlp.up_proj is given twice"]),
    ("seq-len-beyond-positions", ["--seq-len 65", "max_position_embeddings = 64",
                                  "config.json"]),
    ("seed-near-2**64", ["--seed must be in 0..9223372036854775807", str(BIG)]),
    ("seed-negative", ["--seed must be in 0..", "got -1"]),
    ("memorized-id-twice", ["--memorized", "dup.jsonl", "id 'c1' is given twice with "
                            "different text (rows 1 and 3)"]),
])
def test_bad_collect_flags(made, tmp_path, capsys, case, want):
    out = tmp_path / "f"
    argv = [str(a) for a in collect(made, out)]
    at = {flag: argv.index(flag) + 1 for flag in ("--layers", "--tokens", "--seq-len")}
    if case == "layers-twice":
        argv[at["--layers"]] = "1,1"
    elif case == "modules-twice":
        argv[-2:-2] = ["--modules", "mlp.up_proj,mlp.up_proj"]
    elif case == "seq-len-beyond-positions":
        argv[at["--seq-len"]], argv[at["--tokens"]] = "65", "130"
    elif case.startswith("seed"):
        argv[-2:-2] = ["--seed", str(BIG if "2**64" in case else -1)]
    else:
        argv[-2:-2] = ["--memorized", str(memorized_twice(tmp_path))]
    refused(capsys, argv, want, [out], model_loaded=False)


@pytest.mark.parametrize("command", ["world", "train-lm", "mine", "vision-data", "baseline"])
def test_every_seed_flag_has_one_range(made, tmp_path, capsys, command):
    """One check for every --seed, before any file is read (the other arguments may be
    anything): 2**63 is beyond what torch and an HDF5 attribute take."""
    out = tmp_path / "o"
    argv = {"world": ["world"],
            "train-lm": ["train-lm", "--world", tmp_path, "--tokenizer", tmp_path],
            "mine": ["mine", "--model", made["model"], "--data", made["texts"]],
            "vision-data": ["vision-data"],
            "baseline": ["baseline", "bsn", "--model", made["model"], "--forget", made["texts"],
                         "--retain", made["texts"]]}[command]
    refused(capsys, [*argv, "--seed", 2**63, "--out", out], ["--seed must be in 0..",
                                                              str(2**63)], [out],
            model_loaded=False)


def test_baseline_seq_len_beyond_the_models_positions(made, tmp_path, capsys):
    out = tmp_path / "b.safetensors"
    refused(capsys, ["baseline", "bsn", "--model", made["model"], "--forget", made["texts"],
                     "--retain", made["texts"], "--seq-len", 100, "--out", out],
            ["--seq-len 100", "max_position_embeddings = 64"], [out], model_loaded=False)


def test_stability_slices_beyond_the_models_positions_or_seeds(made, tmp_path, capsys):
    out = tmp_path / "s.json"
    base = ["analyze", "stability", "--model", made["model"], "--data", made["tokens"],
            "--layers", "1", "--modules", "mlp.gate_proj", "--set", f"a={tmp_path / 'a'}",
            "--set", f"b={tmp_path / 'b'}", "--out", out]
    refused(capsys, [*base, "--slice", "a=60,0/1,0", "--slice", "b=60,0/1,1", "--seq-len", 65],
            ["--seq-len 65", "max_position_embeddings = 64"], [out], model_loaded=False)
    refused(capsys, [*base, "--slice", f"a=60,0/1,{2**64}", "--slice", "b=60,0/1,1",
                     "--seq-len", 12], ["--slice a: SEED must be in 0.."], [out],
            model_loaded=False)


@pytest.mark.parametrize("command", ["evaluate", "baseline", "analyze"])
def test_a_memorized_id_given_to_two_texts_is_refused(made, tmp_path, capsys, command):
    dup = memorized_twice(tmp_path)
    out = tmp_path / ("b.safetensors" if command == "baseline" else "r.json")
    argv = {"evaluate": ["evaluate", "memorization", "--model", made["model"], "--data", dup],
            "baseline": ["baseline", "bsn", "--model", made["model"], "--forget", dup,
                         "--retain", made["texts"], "--seq-len", 16],
            "analyze": ["analyze", "activation-ratio", "--model", made["model"], "--eigen",
                        made["eigen"], "--layers", "1", "--memorized", dup, "--clean",
                        made["texts"]]}[command]
    refused(capsys, [*argv, "--out", out], [str(dup), "id 'c1' is given twice"], [out],
            model_loaded=False)


@pytest.mark.parametrize("case, want", [
    ("report-lm-entry", ["--entry name '../up'"]),
    ("report-vit-entry", ["--entry name 'x/../y'"]),
    ("stability-set", ["--set name 'a/b'"]),
    ("stress-edit", ["--edit name '..'"]),
])
def test_a_name_that_is_a_path_is_refused(made, tmp_path, capsys, case, want):
    """NAME of NAME=...: the label results are filed under, never a path."""
    out, d = tmp_path / "s.json", tmp_path / "d"
    d.mkdir()
    (d / "vit.json").write_text("{}")
    argv = {"report-lm-entry": ["report-lm", "--entry", f"base={d}", "--entry", f"../up={d}"],
            "report-vit-entry": ["report-vit", "--entry", f"base={d / 'vit.json'}", "--entry",
                                 f"x/../y={d / 'vit.json'}"],
            "stability-set": ["analyze", "stability", "--set", f"a/b={d}", "--set", f"c={d}",
                              "--layers", "1"],
            "stress-edit": ["analyze", "stress", "--model", made["model"], "--memorized",
                            made["texts"], "--edit", f"..={made['edit']}"]}[case]
    refused(capsys, [*argv, "--out", out], want, [out])


# --------------------------------------------------------------------------- workflow dry run


def dry_run(tmp_path, mutate) -> subprocess.CompletedProcess:
    """`snakemake -n` of the smoke config changed by `mutate(config)`, in the repository."""
    import yaml

    config = yaml.safe_load((REPO / "workflow/config/smoke.yaml").read_text())
    mutate(config)
    config["outdir"] = str(tmp_path / "results")
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    t0 = time.time()
    proc = subprocess.run(["snakemake", "-n", f"--configfile={path}", "--cores", "1"], cwd=REPO,
                          capture_output=True, text=True, check=False, timeout=300)
    proc.seconds = time.time() - t0
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("case, want", [
    ("nan-rho", "config lm.edits.kfac.rho: nan is not in (0, 1]"),
    ("rho-above-one", "lm.edits.kfac.rho.0: 1.5"),  # the schema names the key
    ("missing-layer", "layers [9] do not exist; the model has layers 0..3"),
    ("vit-missing-layer", "config vit.edits.svd (svd-L7-drop0.5): layers [7] do not exist"),
    ("nan-svd-drop", "config vit.edits.svd.svd_drop: nan is not in [0, 1)"),
])
def test_the_dry_run_refuses_what_would_fail_hours_later(tmp_path, case, want):
    def mutate(c):
        if case == "nan-rho":
            c["lm"]["edits"]["kfac"]["rho"] = [0.6, float("nan")]
        elif case == "rho-above-one":
            c["lm"]["edits"]["kfac"]["rho"] = [1.5]
        elif case == "missing-layer":
            c["lm"]["edits"]["kfac"]["layers"] = [[2], [9]]
        elif case == "vit-missing-layer":
            c["vit"]["edits"]["svd"]["layers"] = [[7]]
        else:
            c["vit"]["edits"]["svd"]["svd_drop"] = [float("nan")]
    proc = dry_run(tmp_path, mutate)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and want in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert not (tmp_path / "results").exists()
