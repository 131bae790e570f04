"""Directory outputs never delete a directory they did not create: every command that makes a
directory whole (world, tokenizer, train-lm, train-vit, download, harness-tasks, export) refuses
an existing non-empty --out, or one that is a symbolic link, with one error (exit 2, the flag
named) before computing; the user's files stay. An empty directory is taken (the workflow's
engine may make it). Artifacts get the umask's permissions, like any file."""

from __future__ import annotations

import os
import stat

import pytest

from conftest import smoke_lm
from curvmem import io
from curvmem.cli import main
from test_hub import hub_cache, offline_home  # noqa: F401  (offline_home: a fixture)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """The smoke world, tokenizer and model, a vision data file, an SVD edit of the model."""
    root = tmp_path_factory.mktemp("dir_outputs")
    w, tok, m = smoke_lm(root, steps=1)
    assert main(["vision-data", "--out", str(root / "digits.safetensors")]) == 0
    edit = root / "svd.safetensors"
    assert main(["edit", "--model", str(m), "--method", "svd", "--svd-drop", "0.5",
                 "--layers", "1", "--modules", "mlp.gate_proj", "--out", str(edit)]) == 0
    return {"root": root, "world": w, "tok": tok, "model": m, "edit": edit,
            "digits": root / "digits.safetensors"}


COMMANDS = ["world", "tokenizer", "train-lm", "train-vit", "download", "harness-tasks", "export"]


def argv(command: str, made: dict, out) -> list[str]:
    """Inputs that would make the command write (and on the old code replace) `out`."""
    w, tok = made["world"], made["tok"]
    return [str(a) for a in {
        "world": ["world", "--preset", "smoke"],
        "tokenizer": ["tokenizer", "--corpus", w / "train.jsonl", "--vocab-size", 300],
        "train-lm": ["train-lm", "--world", w, "--tokenizer", tok, "--preset", "smoke",
                     "--steps", 1],
        "train-vit": ["train-vit", "--data", made["digits"], "--preset", "smoke", "--epochs", 1],
        "download": ["download", "--model", "someone/tiny-olmo2"],
        "harness-tasks": ["harness-tasks", "--data", w / "tasks.jsonl", "--tokenizer", tok],
        "export": ["export", "--model", made["model"], "--edit", made["edit"]],
    }[command] + ["--out", out]]


@pytest.fixture
def hub(offline_home, made):  # noqa: F811
    hub_cache(offline_home, "someone/tiny-olmo2", made["model"])


def one_error(capsys, code: int = 2) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if ": error: " in line]
    assert len(errors) == 1, err
    return errors[0]


def no_temporaries(where) -> None:
    left = [p.name for p in where.iterdir() if p.name.startswith(".")]
    assert not left, left


@pytest.mark.parametrize("command", COMMANDS)
def test_an_existing_out_is_refused_and_its_files_stay(made, hub, tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("the user's own file")
    capsys.readouterr()
    assert main(argv(command, made, out)) == 2
    error = one_error(capsys)
    assert error.startswith(f"curvmem {command}: error: --out {out}: exists and is not empty")
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert (out / "mine.txt").read_text() == "the user's own file"
    no_temporaries(tmp_path)
    assert "model_ready" not in io._STARTUP  # refused before anything was computed


@pytest.mark.parametrize("command", COMMANDS)
def test_a_symbolic_link_out_is_one_error(made, hub, tmp_path, capsys, command):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "mine.txt").write_text("kept")
    link = tmp_path / "out"
    link.symlink_to(target)
    capsys.readouterr()
    assert main(argv(command, made, link)) == 2
    assert f"--out {link}: is a symbolic link" in one_error(capsys)
    assert link.is_symlink() and [p.name for p in target.iterdir()] == ["mine.txt"]
    no_temporaries(tmp_path)


def test_an_empty_out_is_taken_and_a_failed_chain_empties_it_again(made, tmp_path, capsys):
    out = tmp_path / "w"
    out.mkdir()
    assert main(["world", "--preset", "smoke", "--out", str(out)]) == 0
    assert (out / "world.json").is_file()
    again = tmp_path / "again"
    again.mkdir()
    assert main(["world", "--preset", "smoke", "--out", str(again), "--then", "tokenizer",
                 "--corpus", str(tmp_path / "missing.jsonl"), "--out", str(tmp_path / "t")]) == 2
    assert again.is_dir() and not any(again.iterdir())  # its files went; the directory stays


def test_atomic_dir_never_replaces_a_directory_made_meanwhile(tmp_path):
    """The check before the work is repeated before the rename: a directory another process
    filled while this one worked is kept, and the work is discarded with one error."""
    out = tmp_path / "out"
    with pytest.raises(io.OutputError, match="exists and is not empty"):
        with io.atomic_dir(out) as tmp:
            (tmp / "result.txt").write_text("ours")
            out.mkdir()
            (out / "theirs.txt").write_text("theirs")
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    no_temporaries(tmp_path)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_artifacts_follow_the_umask(made, tmp_path, umask):
    """Safetensors files were written 0600 beside 0644 sidecars: every file now gets what a
    plain open() gives under the umask, in a file output and in a directory output."""
    old = os.umask(umask)
    try:
        edit = tmp_path / "e.safetensors"
        assert main(["edit", "--model", str(made["model"]), "--method", "svd", "--svd-drop",
                     "0.5", "--layers", "1", "--modules", "mlp.gate_proj", "--out",
                     str(edit)]) == 0
        model, exported = tmp_path / "m", tmp_path / "x"
        assert main(argv("train-lm", made, model)) == 0
        assert main(argv("export", made, exported)) == 0
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    files = [edit, io.checksum_path(edit), edit.with_suffix(".json"),
             *[p for d in (model, exported) for p in d.rglob("*") if p.is_file()]]
    for d in (model, exported):
        assert any(p.suffix == ".safetensors" for p in d.iterdir())
        assert mode(d) == 0o777 & ~umask
    assert {str(p): oct(mode(p)) for p in files} == {str(p): oct(want) for p in files}
