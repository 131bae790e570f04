"""Base model + edit file -> a full Hugging Face checkpoint (`curvmem export`).

The result loads with `AutoModelForCausalLM.from_pretrained(DIR)` anywhere, without curvmem, and
its config records the edit: `config.curvmem_edit = {method, spec, edit_sha256, ...}`. The
checkpoint is written in the base model's own dtype (unless asked otherwise) into a temp
directory beside DIR, renamed into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import torch

from curvmem import __version__
from curvmem.io import follow_umask
from curvmem.io import sha256_file as file_sha256
from curvmem.schema import edit_sidecar

DTYPES = ("auto", "float32", "bfloat16", "float16")


def _has_tokenizer(path) -> bool:
    p = Path(str(path))
    return p.is_dir() and any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"--out {out}: exists and is not an empty directory; "
                         "choose a new directory (an export never overwrites)")


def _load_dtype(model_path, dtype: str, trust_remote_code: bool) -> torch.dtype:
    """`auto`: the dtype the checkpoint says it is stored in (float32 when it does not say)."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {DTYPES}, got '{dtype}'")
    if dtype != "auto":
        return getattr(torch, dtype)
    from curvmem.model.load import stored_dtype

    return stored_dtype(model_path, trust_remote_code)


def export_edited(model_path, edit_path, out, tokenizer=None, dtype: str = "auto",
                  trust_remote_code: bool = False) -> dict:
    """Write base + edit as a checkpoint directory `out`; returns the note put in its config.

    Every input is checked (edit file, its sidecar's model fingerprint against the loaded base,
    parameter names and shapes, an empty --out) before anything is written.
    """
    from curvmem.edit import apply
    from curvmem.model.load import load_model, load_tokenizer

    edit_path, out = Path(edit_path), Path(out)
    if not edit_path.is_file():
        raise ValueError(f"--edit {edit_path}: no such file")
    if edit_path.suffix != ".safetensors":
        raise ValueError(f"--edit {edit_path}: an edit file ends in .safetensors")
    _check_out(out)
    if tokenizer is not None and not _has_tokenizer(tokenizer):
        raise ValueError(f"--tokenizer {tokenizer}: no tokenizer.json or tokenizer_config.json")
    tok_source = tokenizer if tokenizer is not None else (
        model_path if _has_tokenizer(model_path) else None)

    model = load_model(model_path, dtype=_load_dtype(model_path, dtype, trust_remote_code),
                       trust_remote_code=trust_remote_code, device="cpu")
    meta = apply(model, edit_path)  # refuses another model's edit (fingerprint, names, shapes)
    tok = load_tokenizer(tok_source, trust_remote_code) if tok_source is not None else None
    side = edit_sidecar(edit_path)
    note = {"method": meta.get("method"), "spec": meta.get("spec"),
            "edit_file": edit_path.name, "edit_sha256": file_sha256(edit_path),
            "sidecar_sha256": file_sha256(side) if side.is_file() else None,
            "base_model": str(model_path), "base_fingerprint": meta.get("model_fingerprint"),
            "curvmem_version": __version__}
    model.config.curvmem_edit = note

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        model.save_pretrained(str(tmp), safe_serialization=True)
        if tok is not None:
            tok.save_pretrained(str(tmp))
        if side.is_file():  # the edit's own record travels with the checkpoint
            (tmp / "curvmem_edit.json").write_text(side.read_text())
        follow_umask(tmp)  # save_pretrained writes its weights 0600, like every safetensors
        _check_out(out)  # still free after the (long) save: never replace someone's directory
        os.replace(tmp, out)  # an empty directory is replaced; a non-empty one was refused
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return {**note, "tokenizer": str(tok_source) if tok_source is not None else None,
            "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}

