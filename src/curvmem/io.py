"""Files, atomically: temp file + rename writes, JSON and JSONL, and the cost of a block.

The lowest layer of curvmem: standard library and numpy only. Every artifact write goes through
`atomic_output` (or `write_json`, which uses it), so a killed job never leaves a file that looks
complete.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class StoreError(ValueError):
    """An artifact that is missing, malformed, or does not belong to the model at hand."""


# --------------------------------------------------------------------------- JSONL data files


def iter_jsonl(path, required: tuple[str, ...] = ()):
    """Rows of a JSONL file, streamed; one clear error for a missing file, bad JSON, a line that
    is not an object, or missing fields. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open() as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{i}: each line must be a JSON object")  # noqa: TRY004
            missing = [k for k in required if k not in row]
            if missing:
                raise ValueError(f"{path}:{i}: missing field(s) {missing}")
            yield row


def read_jsonl(path, required: tuple[str, ...] = ()) -> list[dict]:
    """`iter_jsonl` as a list; an empty file is an error too."""
    rows = list(iter_jsonl(path, required))
    if not rows:
        raise ValueError(f"{path}: no rows (the file is empty)")
    return rows


# --------------------------------------------------------------------------- atomic writes


@contextmanager
def atomic_output(path):
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path, obj) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n")


def read_json(path):
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{path}: not valid JSON ({e})") from None


@contextmanager
def atomic_dir(out):
    """Yield a temp directory beside `out`; it replaces `out` only if the block succeeds."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


# --------------------------------------------------------------------------- cost of a block


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20


@contextmanager
def cost():
    """Measure wall seconds and peak RSS of a block: `with cost() as c: ...; c["seconds"]`."""
    c = {}
    t0 = time.perf_counter()
    yield c
    c["seconds"] = round(time.perf_counter() - t0, 3)
    c["peak_rss_mb"] = round(peak_rss_mb(), 1)


# --------------------------------------------------------------------------- process start-up


_STARTUP = {}  # "model_ready": the process's age when its model was first loaded or built


def process_age() -> float | None:
    """Seconds since this process started (from /proc, 10 ms resolution); None without /proc."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError):
        return None


def begin_command() -> float | None:
    """The process's age as a command starts; forgets an earlier command's model load (tests
    run several commands in one process)."""
    _STARTUP.clear()
    return process_age()


def note_model_ready() -> None:
    """Mark the end of start-up (interpreter, imports, model loaded or built); the first call
    counts."""
    _STARTUP.setdefault("model_ready", process_age())


def startup_split(command_age: float | None) -> dict | None:
    """How a finished process spent its time: start-up up to its first model load (without a
    model, up to the command's start, `command_age`), then compute. None without /proc."""
    age = process_age()
    ready = _STARTUP.get("model_ready") or command_age
    if age is None or ready is None:
        return None
    return {"startup_seconds": round(ready, 2), "compute_seconds": round(age - ready, 2),
            "model_ready": "model_ready" in _STARTUP}

