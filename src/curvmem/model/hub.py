"""A hub model as a local directory: download a snapshot once, so compute jobs load files only.

`download_snapshot` resolves (repo id, revision) through `huggingface_hub.snapshot_download`,
which uses the hub cache (`HF_HOME`, or `cache_dir`) and works offline when the snapshot is
already cached there (`HF_HUB_OFFLINE=1`). The snapshot's files are then linked into `out`: hard
links when the cache shares `out`'s file system (no second copy, and they survive a cache
cleanup), else symbolic links, or copies with `copy=True` (a cache that compute nodes cannot
see). `out/curvmem_download.json` records the repo, the revision asked for and the commit it
resolved to.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from curvmem import io

NOTE_FILE = "curvmem_download.json"
# weights in formats curvmem never loads (transformers reads safetensors or .bin; timm/curvmem
# vision directories safetensors): skipped so a 7B snapshot is not downloaded twice over
SKIPPED = ["*.pth", "*.pt", "*.gguf", "*.onnx", "*.msgpack", "*.h5", "*.ot", "original/*"]


def download_snapshot(repo_id: str, out, revision: str | None = None, *, cache_dir=None,
                      copy: bool = False) -> dict:
    """Make `out` a directory holding the snapshot of `repo_id` at `revision` (default: main)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    if Path(repo_id).exists():
        raise ValueError(f"{repo_id} is a local path, not a hub id: use it as --model directly")
    try:
        snapshot = Path(snapshot_download(repo_id, revision=revision, cache_dir=cache_dir,
                                          ignore_patterns=SKIPPED))
    except LocalEntryNotFoundError as e:
        raise ValueError(f"{repo_id}@{revision or 'main'}: not in the hub cache and the hub "
                         f"cannot be reached (HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE')}):"
                         f" {e}") from None
    except HFValidationError as e:
        raise ValueError(f"{repo_id}: not a valid hub id ({e})") from None
    files = sorted(p for p in snapshot.rglob("*") if p.is_file())
    if not any(f.name == "config.json" for f in files):
        raise ValueError(f"{repo_id}@{revision or 'main'}: the snapshot has no config.json "
                         f"(files: {[f.name for f in files][:10]})")
    note = {"repo_id": repo_id, "revision": revision, "commit": snapshot.name,
            "files": [str(f.relative_to(snapshot)) for f in files]}
    with io.atomic_dir(out) as tmp:
        for f in files:
            dest = tmp / f.relative_to(snapshot)
            dest.parent.mkdir(parents=True, exist_ok=True)
            _place(f.resolve(), dest, copy)
        io.write_json(tmp / NOTE_FILE, note)
    return note


def _place(src: Path, dest: Path, copy: bool) -> None:
    if copy:
        shutil.copy2(src, dest)
        return
    try:
        os.link(src, dest)
    except OSError:  # another file system (or no hard links there): link by name
        os.symlink(src, dest)
