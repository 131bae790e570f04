"""Helpers shared by the CLI command groups."""

from __future__ import annotations

import json


def add_model_args(p, required: bool = True) -> None:
    p.add_argument("--model", required=required,
                   help="HF causal LM path or hub id, or a curvmem/timm vision model directory")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own code from the hub (off by default)")


# every seed: one that numpy (SeedSequence), torch (manual_seed: 64 bits) and the factor
# files' netCDF/HDF5 attributes (int64) all take; a larger one was a TypeError from HDF5
SEED_MAX = 2**63 - 1


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{flag} must be in 0..{SEED_MAX} (2**63 - 1), got {seed}")
    return seed


def unique(items: list, flag: str, what: str) -> list:
    """`items` as given, refusing one given twice (`--layers 1,1`: the layer would be edited or
    collected twice over, silently)."""
    seen = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{flag}: {what} {item} is given twice")
        seen.add(item)
    return items


def check_name(name: str, flag: str) -> str:
    """A NAME of NAME=... (an entry, a factor set, an edit): a label that results are filed
    under, so never a path (`a/b`, `..`)."""
    if "/" in name or "\\" in name or ".." in name:
        raise ValueError(f"{flag} name '{name}': a name may not hold '/', '\\' or '..'")
    return name


# where a model's config.json gives its maximum positions (GPT-2: n_positions)
MAX_POSITIONS = ("max_position_embeddings", "n_positions", "n_ctx")


def _config_file(model):
    """A model's config.json: in its directory, or for a hub id the hub cache's copy (read
    offline; None when it is not there yet)."""
    from pathlib import Path

    path = Path(str(model))
    if path.exists() or str(model).count("/") != 1:
        return path / "config.json"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(str(model), "config.json")
    except Exception:  # noqa: BLE001  (not a valid hub id: the loader names it)
        return None
    return Path(cached) if isinstance(cached, str) else None


def check_seq_len(model, seq_len: int, flag: str = "--seq-len") -> None:
    """Refuse a sequence length beyond the model's maximum positions, read from its config.json
    alone, before the weights load (a model without such a field, or a hub id not in the hub
    cache, is not checked here)."""
    config = _config_file(model)
    if config is None:
        return
    try:
        values = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no local config, or one the loader will name as broken
    for key in MAX_POSITIONS:
        limit = values.get(key) if isinstance(values, dict) else None
        if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
            if seq_len > limit:
                raise ValueError(f"{flag} {seq_len}: beyond the model's maximum positions "
                                 f"({key} = {limit} in {config})")
            return


def check_ids(rows: list[dict], where) -> list[dict]:
    """Refuse memorized rows that give one id twice with different text: the two items would be
    scored (or counted) as one under a name that means two things."""
    first = {}
    for i, row in enumerate(rows, 1):
        if "id" not in row:
            continue
        key = json.dumps(row["id"], sort_keys=True)
        text = row.get("text", row)
        if key in first and first[key][1] != text:
            raise ValueError(f"{where}: id {row['id']!r} is given twice with different text "
                             f"(rows {first[key][0]} and {i})")
        first.setdefault(key, (i, text))
    return rows


def check_memorized_file(path, flag: str) -> None:
    """Read a memorized-set JSONL file once for its ids (`check_ids`) before the command reads
    it itself (a missing or empty file is left to the command to name)."""
    from pathlib import Path

    from curvmem.io import iter_jsonl

    if Path(path).is_file():
        check_ids(list(iter_jsonl(path)), f"{flag} {path}")
