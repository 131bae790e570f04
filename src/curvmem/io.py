"""Files, atomically: temp file + rename writes, JSON and JSONL, and the cost of a block.

The lowest layer of curvmem: standard library and numpy only. Every artifact write goes through
`atomic_output` (or `write_json`, which uses it), so a killed job never leaves a file that looks
complete.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np


class StoreError(ValueError):
    """An artifact that is missing, malformed, or does not belong to the model at hand."""


class OutputError(ValueError):
    """An output path that cannot be written (found before any computation), or one that another
    process is writing right now."""


# --------------------------------------------------------------------------- JSONL data files


def iter_jsonl(path, required: tuple[str, ...] = ()):
    """Rows of a JSONL file, streamed; one clear error for a missing file, bad JSON, a line that
    is not an object, or missing fields. Blank lines are skipped."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    with path.open("rb") as f:
        for i, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{i}: not UTF-8 text ({e.reason} at byte {e.start})") \
                    from None
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


def _umask() -> int:
    try:  # read, not set: os.umask can only be read by setting it, for every thread at once
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path) -> None:
    """Give `path` (a file, or every file and directory under a directory) the mode a plain
    `open()` or `mkdir` gives under the umask. Some writers create 0600 files whatever the umask
    (safetensors' save_file, hence save_pretrained): an artifact's sidecar was 0644, its weights
    0600. Symbolic links and hard-linked files (a downloaded snapshot shares the hub cache's
    files) are left as they are: their mode is not ours to change."""
    mask = _umask()
    path = Path(path)
    todo = [path, *path.rglob("*")] if path.is_dir() and not path.is_symlink() else [path]
    for p in todo:
        st = p.lstat()
        if p.is_symlink() or (not p.is_dir() and st.st_nlink > 1):
            continue
        executable = p.is_dir() or st.st_mode & 0o111
        mode = (0o777 if executable else 0o666) & ~mask
        if st.st_mode & 0o777 != mode:
            os.chmod(p, mode)


def _named(e: OSError, tmp: Path, path: Path) -> OSError:
    """An OSError about the temp file `tmp` as one about the output `path` it stands for: the
    error names the write that failed."""
    name = str(e.filename) if e.filename is not None else ""
    if name.startswith(str(tmp)):
        return type(e)(e.errno, e.strerror, str(path) + name[len(str(tmp)):])
    return e


def _discard(tmp: Path) -> None:
    """Remove a temp file or directory; one that cannot be removed (its directory went
    read-only) stays, without hiding the error that stopped the write."""
    try:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp)
        elif os.path.lexists(tmp):
            tmp.unlink()
    except OSError as e:
        print(f"curvmem: note: could not remove the temporary {tmp} ({e.strerror})",
              file=sys.stderr)


@contextmanager
def atomic_output(path):
    """Yield a temp path beside `path`; rename it over `path` only if the block succeeds. The
    file gets the umask's mode, as a plain `open()` would give it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            yield tmp
            if tmp.is_file():
                follow_umask(tmp)
            os.replace(tmp, path)
        except OSError as e:
            raise _named(e, tmp, path) from None
    finally:
        if os.path.lexists(tmp):
            _discard(tmp)


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
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StoreError(f"{path}: not valid JSON ({e})") from None


def check_new_dir(out, flag: str = "--out") -> None:
    """Refuse a directory output that would replace something: a command that makes a directory
    whole (world, tokenizer, train-lm, download, ...) never deletes one it did not create. An
    empty directory is taken (the workflow's engine may make it); a symbolic link is refused, not
    followed."""
    out = Path(out)
    if out.is_symlink():
        raise OutputError(f"{flag} {out}: is a symbolic link; give a new directory (a directory "
                          "output never replaces a link or what it points to)")
    if out.is_dir() and any(out.iterdir()):
        raise OutputError(f"{flag} {out}: exists and is not empty; give a new directory, or "
                          "remove this one yourself (a directory output never replaces one)")


@contextmanager
def atomic_dir(out, flag: str = "--out"):
    """Yield a temp directory beside `out`; it becomes `out` only if the block succeeds and `out`
    is still absent or empty (`check_new_dir`: checked again after the work, since another
    process may have made it meanwhile). Never deletes an existing `out`."""
    out = Path(out)
    check_new_dir(out, flag)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        try:
            tmp.mkdir()
            yield tmp
            follow_umask(tmp)
            check_new_dir(out, flag)
            os.replace(tmp, out)  # over an empty directory only (rename(2) refuses others)
        except OSError as e:
            raise _named(e, tmp, out) from None
    finally:
        if os.path.lexists(tmp):
            _discard(tmp)


# --------------------------------------------------------------------------- checksums
# Every artifact file (factor / eigen netCDF, edit and model safetensors) gets a sidecar
# `<file>.sha256` in `sha256sum` format, written after the payload is in place: a payload whose
# sidecar is missing was never completely written, one whose digest differs is corrupt (a full
# disk, a dead node, a truncated copy). `sha256sum -c FILE.sha256` checks it by hand too.

CHECKSUM_SUFFIX = ".sha256"


def checksum_path(path) -> Path:
    path = Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_checksum(path) -> None:
    """Record `path`'s digest in `<path>.sha256` (atomically); call it once `path` is final."""
    path = Path(path)
    digest = sha256_file(path)
    with atomic_output(checksum_path(path)) as tmp:
        tmp.write_text(f"{digest}  {path.name}\n")


def verify_checksum(path, producer: str, required: bool = True) -> None:
    """Refuse an artifact whose checksum sidecar is missing (unless not `required`: models made
    elsewhere have none) or does not match its bytes; the error names the file and `producer`,
    the command (and workflow rule) that writes it."""
    path = Path(path)
    side = checksum_path(path)
    redo = f"delete it and rerun {producer}"
    if not side.is_file() and not required:
        return
    if not side.is_file():
        raise StoreError(f"{path} is incomplete (no checksum file {side.name}: it was never "
                         f"completely written); {redo}")
    recorded = side.read_text(errors="replace").split()
    if not recorded or recorded[0] != sha256_file(path):
        raise StoreError(f"{path} is corrupt (sha256 differs from {side.name}); {redo}")


@contextmanager
def atomic_artifact(path):
    """`atomic_output` for an artifact: any old checksum goes first, the new one is written
    after the payload is renamed into place."""
    path = Path(path)
    checksum_path(path).unlink(missing_ok=True)
    with atomic_output(path) as tmp:
        yield tmp
    write_checksum(path)


# --------------------------------------------------------------------------- output paths


def check_output(path, flag: str = "--out", is_dir: bool = False) -> None:
    """Refuse, before any computation, an output path that cannot be written: a directory where
    a file goes (or the reverse), a file in the way of a parent directory, a read-only place."""
    path = Path(path)
    if path.exists():
        if is_dir and not path.is_dir():
            raise OutputError(f"{flag} {path}: a file is in the way (a directory goes there)")
        if not is_dir and path.is_dir():
            raise OutputError(f"{flag} {path}: is a directory (a file goes there)")
    parent = path if is_dir and path.is_dir() else path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"{flag} {path}: {parent} is a file, not a directory")
    try:  # os.access is wrong for root and for read-only mounts; a real file is not
        fd, probe = tempfile.mkstemp(prefix=".curvmem-probe-", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"{flag} {path}: cannot write in {parent} ({e.strerror})") from None


def check_space(path, needed: int) -> None:
    """Refuse to start writing `needed` bytes at `path` on a filesystem without that much free:
    the full-disk error, before a partial file."""
    parent = Path(path).parent
    while not parent.exists():
        parent = parent.parent
    free = shutil.disk_usage(parent).free
    if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device: {path} needs about "
                      f"{needed / 2**20:.1f} MiB, {parent} has {free / 2**20:.1f} MiB free")


@contextmanager
def exclusive(path, flag: str = "--out"):
    """Hold an exclusive lock on `<path>.lock` (beside it) for the block: a second process writing
    the same output fails at once instead of both racing to rename over it. A POSIX lock (works
    on NFS): the kernel drops it when its holder dies, so a killed run leaves no stale lock."""
    import fcntl

    path = Path(path)
    lock = path.with_name(f".{path.name}.lock")
    created = []  # directories made for the lock: removed again if the command left them empty
    parent = lock.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise OutputError(f"{flag} {path}: another curvmem process is writing it now "
                                  f"(it holds {lock}); wait for it, or give another {flag}") \
                    from None
            raise
        try:  # the holder before us may have removed the file we locked: lock the new one
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        try:  # a directory made read-only meanwhile: the write that failed is the error to see
            lock.unlink(missing_ok=True)
        except OSError as e:
            print(f"curvmem: note: could not remove the lock file {lock} ({e.strerror})",
                  file=sys.stderr)
        os.close(fd)
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break


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


# --------------------------------------------------------------------------- cost files
# A cost is a measurement (wall seconds, peak RSS, a start-up split): it differs between any two
# runs of the same command. Costs never go into a result (netCDF attributes, edit sidecars,
# evaluation, analysis and summary JSON, result tables), so a result is byte-identical however
# often its job was killed and rerun; each command writes its costs to `<output>.cost.json` beside
# its primary output (for a directory output, beside the directory), after the output.

COST_SUFFIX = ".cost.json"


def cost_path(path) -> Path:
    """The cost file of an output: `<path>.cost.json`, beside it."""
    path = Path(path)
    return path.with_name(path.name.rstrip("/") + COST_SUFFIX)


def write_cost(path, measured: dict) -> None:
    """Record the costs of making `path` (call it once `path` is final)."""
    write_json(cost_path(path), measured)


def read_cost(path) -> dict | None:
    """The costs recorded beside `path`; None when it has none (made elsewhere, or an older
    curvmem) or they cannot be read: a cost is never a reason to refuse a result."""
    side = cost_path(path)
    try:
        return json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


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

