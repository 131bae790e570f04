"""`curvmem A ... --then B ...`: several commands in one process (the workflow runs each edit with
its evaluations so). The files are those of the commands run one by one; every command's outputs
are checked before the first starts; a failed chain leaves nothing it wrote."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from conftest import smoke_lm
from curvmem.cli import main
from curvmem.io import checksum_path, cost_path
from curvmem.schema import edit_sidecar


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """A smoke world and its model (4 steps)."""
    root = tmp_path_factory.mktemp("chain")
    w, _, m = smoke_lm(root)
    return root, w, m


def edit_args(m, out):
    return ["edit", "--model", str(m), "--method", "svd", "--svd-drop", "0.5", "--layers", "1",
            "--modules", "mlp.gate_proj", "--out", str(out)]


def eval_args(m, w, edit, d):
    return ["evaluate", "batch", "--model", str(m), "--edit", str(edit),
            "--run", "perplexity", str(w / "heldout.jsonl"), str(d / "perplexity.json"),
            "--run", "coherence", str(w / "heldout.jsonl"), str(d / "coherence.json")]


def without_cost(path):
    """A result without what is measured or names the directory (the edit's time and memory)."""
    result = json.loads(path.read_text())
    result.pop("cost", None), result.pop("edit_file")  # (costs may be in their own file)
    result["edit"].pop("seconds", None), result["edit"].pop("peak_rss_mb", None)
    return result


def test_a_chain_writes_what_its_commands_write_one_by_one(smoke, tmp_path, capfd):
    root, w, m = smoke
    one, chained = tmp_path / "one", tmp_path / "chained"
    assert main(edit_args(m, one / "e.safetensors")) == 0
    assert main(eval_args(m, w, one / "e.safetensors", one)) == 0
    capfd.readouterr()
    assert main([*edit_args(m, chained / "e.safetensors"), "--then",
                 *eval_args(m, w, chained / "e.safetensors", chained)]) == 0
    err = capfd.readouterr().err
    assert err.count("curvmem timing:") == 1  # one process, one start-up/compute split
    a, b = load_file(one / "e.safetensors"), load_file(chained / "e.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    assert checksum_path(chained / "e.safetensors").is_file()
    assert edit_sidecar(chained / "e.safetensors").is_file()
    for name in ("perplexity.json", "coherence.json"):
        assert without_cost(chained / name) == without_cost(one / name)


def test_a_failed_later_command_removes_what_the_chain_wrote(smoke, tmp_path, capsys):
    root, w, m = smoke
    edit = tmp_path / "x" / "e.safetensors"
    bad = eval_args(m, w, edit, tmp_path / "x")
    bad[bad.index(str(w / "heldout.jsonl"))] = str(tmp_path / "missing.jsonl")
    assert main([*edit_args(m, edit), "--then", *bad]) == 2
    captured = capsys.readouterr()
    assert f"-> {edit}" in captured.out  # the edit was written: the first command finished
    assert "curvmem evaluate: error:" in captured.err and "missing.jsonl" in captured.err
    assert not any((tmp_path / "x").rglob("*.*"))  # no edit, sidecar, checksum or result


def test_a_failed_chain_removes_only_what_it_made(smoke, tmp_path, capsys):
    """An output directory the chain made goes; in one that was there (collect's: each layer's
    job writes its own file into it) only the command's own files go."""
    root, w, m = smoke
    bad = ["tokenizer", "--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "t")]
    made, there = tmp_path / "made", tmp_path / "there"
    there.mkdir()
    (there / "layer_0.nc").write_text("another layer's job wrote this")

    def collect(out):
        return ["collect", "--model", str(m), "--data", str(w / "heldout.jsonl"), "--layers", "1",
                "--tokens", "64", "--seq-len", "16", "--batch-size", "4", "--out", str(out)]

    for out in (made, there):
        assert main([*collect(out), "--then", *bad]) == 2
        captured = capsys.readouterr()
        assert str(out) in captured.out and "curvmem tokenizer: error:" in captured.err
    assert not made.exists()
    assert sorted(p.name for p in there.iterdir()) == ["layer_0.nc"]


def test_every_output_is_checked_before_the_first_command_runs(smoke, tmp_path, capsys):
    root, w, m = smoke
    edit, blocker = tmp_path / "e.safetensors", tmp_path / "d"
    (blocker / "perplexity.json").mkdir(parents=True)  # a directory where a result goes
    assert main([*edit_args(m, edit), "--then", *eval_args(m, w, edit, blocker)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert not edit.exists() and not edit_sidecar(edit).exists()


def test_two_commands_of_a_chain_may_not_write_one_file(smoke, tmp_path, capsys):
    root, w, m = smoke
    edit = tmp_path / "e.safetensors"
    assert main([*edit_args(m, edit), "--then", *edit_args(m, edit)]) == 2
    assert "two commands of one --then chain write" in capsys.readouterr().err
    assert not edit.exists()


@pytest.mark.parametrize("argv", [["--then", "world", "--out", "w"], ["world", "--out", "w",
                                                                       "--then"]])
def test_then_needs_a_command_on_each_side(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "--then joins two commands" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("command", ["edit", "baseline"])
def test_an_edits_sidecar_counts_as_written(command, tmp_path):
    """`curvmem edit` and `curvmem baseline bsn` write an edit with a JSON sidecar (and a
    checksum and a cost file): all four go when a later command of the chain fails."""
    from argparse import Namespace

    from curvmem.cli import written_files

    edit = str(tmp_path / "e.safetensors")
    files = written_files(Namespace(command=command), [(edit, "--out", False)],
                          [(edit, "--out")], set())
    assert files == [edit, str(checksum_path(edit)), str(cost_path(edit)), str(edit_sidecar(edit))]



def test_analyze_batch_outputs_are_its_runs_outputs(smoke, tmp_path, monkeypatch):
    """`analyze batch --run '...'`: what is checked, locked and (when a later command fails)
    removed are the runs' --out and --figure. It was the third character of each run string
    ('e' of 'spectra ...'): a failed chain deleted the user's file 'e' in the working
    directory."""
    from curvmem.cli import build_parser, outputs

    root, w, m = smoke
    factors, eigen, out = tmp_path / "f", tmp_path / "eigen", tmp_path / "s.json"
    assert main(["collect", "--model", str(m), "--data", str(w / "heldout.jsonl"), "--layers",
                 "1", "--tokens", "64", "--seq-len", "16", "--batch-size", "4", "--out",
                 str(factors), "--then", "eigen", "--factors", str(factors / "layer_1.nc"),
                 "--out", str(eigen / "layer_1.nc")]) == 0
    run = f"spectra --eigen {eigen} --layers 1 --modules mlp.gate_proj --out {out}"
    args = build_parser().parse_args(["analyze", "batch", "--run", run])
    assert [(p, flag) for p, flag, _ in outputs(args)] == [(str(out), "--run ... --out")]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "e").write_text("the user's file")
    monkeypatch.chdir(cwd)
    assert main(["analyze", "batch", "--run", run, "--then", "tokenizer", "--corpus",
                 str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "t")]) == 2
    assert not out.exists()  # the run's own output went with the chain
    assert sorted(p.name for p in cwd.iterdir()) == ["e"]
    assert (cwd / "e").read_text() == "the user's file"
