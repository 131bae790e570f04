"""Token streams for factor collection: a corpus in, packed [n_seq, seq_len] token ids out.

Sources: a JSONL file with a "text" field per line, a plain-text file (one document per non-empty
line), a `.npy` array of token ids (1-D stream to pack, or 2-D [n_seq, seq_len] used as given),
a directory from `datasets`' `save_to_disk`, or a dataset streamed from the hub (or a local
directory of parquet/JSON files) as `hf:NAME[/CONFIG][:SPLIT][@REVISION][#FIELD]` (see
`parse_hf`). Documents are joined with the tokenizer's EOS token and packed without padding; the
remainder that does not fill a whole sequence is dropped. Reading stops once the tokens asked
for are there, so a streamed corpus is never downloaded beyond them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch


def parse_hf(data: str) -> dict:
    """`hf:NAME[/CONFIG][:SPLIT][@REVISION][#FIELD]` -> load_dataset arguments and the text field.

    NAME is a hub id (owner/name) or a local directory of data files; a third path component is
    the config (hf:allenai/c4/en:train). SPLIT defaults to train, FIELD to text.
    """
    spec = data[3:]
    spec, _, field = spec.partition("#")
    spec, _, revision = spec.partition("@")
    path, _, split = spec.partition(":")
    if not path:
        raise ValueError(f"{data}: no dataset name after 'hf:'")
    config = None
    if not Path(path).is_dir():
        parts = path.split("/")
        if len(parts) > 3 or not all(parts):
            raise ValueError(f"{data}: expected hf:NAME[/CONFIG][:SPLIT][@REVISION][#FIELD] "
                             "with NAME = owner/name or a local directory")
        if len(parts) == 3:
            path, config = "/".join(parts[:2]), parts[2]
    return {"path": path, "name": config, "split": split or "train",
            "revision": revision or None, "field": field or "text"}


def _iter_hf(data: str):
    """Texts of a streamed dataset: rows are fetched as they are consumed, never all at once."""
    import datasets

    spec = parse_hf(data)
    field = spec.pop("field")
    rows = datasets.load_dataset(**spec, streaming=True)
    for i, row in enumerate(rows):
        if field not in row:
            raise ValueError(f"{data}: row {i} has no field '{field}' (has {sorted(row)}); "
                             "name the text field with hf:...#FIELD")
        yield row[field]


def iter_texts(data) -> Iterator[str]:
    """Documents of a text corpus (any source but .npy), read lazily."""
    return _iter_texts(str(data))


def _iter_texts(data: str):
    if data.startswith("hf:"):
        yield from _iter_hf(data)
        return
    path = Path(data)
    if path.is_dir():
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            ds = ds["train"]
        if "text" not in ds.column_names:
            raise ValueError(f"{path}: dataset has no 'text' column (has {ds.column_names})")
        yield from ds["text"]
        return
    if path.suffix in (".jsonl", ".json"):
        from curvmem.io import iter_jsonl

        yield from (row["text"] for row in iter_jsonl(path, ("text",)))
        return
    with path.open() as f:
        yield from (line.rstrip("\n") for line in f if line.strip())


def load_token_sequences(data, seq_len: int | None, tokenizer=None,
                         n_tokens: int | None = None) -> torch.Tensor:
    """Packed token ids, LongTensor [n_seq, seq_len], at most n_tokens // seq_len sequences."""
    data = str(data)
    if not data.startswith("hf:") and not Path(data).exists():
        raise ValueError(f"{data}: no such corpus file or directory")
    if data.endswith(".npy"):
        ids = np.load(data, allow_pickle=False)
        if ids.ndim == 2:
            if seq_len not in (None, ids.shape[1]):
                raise ValueError(f"{data}: 2-D token array has sequences of {ids.shape[1]} tokens, "
                                 f"but --seq-len is {seq_len}; pass --seq-len {ids.shape[1]}")
            seqs = torch.as_tensor(ids.astype(np.int64))
            if n_tokens is not None:
                seqs = seqs[: max(n_tokens // ids.shape[1], 0)]
            return _check_nonempty(seqs, data, seq_len or ids.shape[1])
        if ids.ndim != 1:
            raise ValueError(f"{data}: token array must be 1-D or 2-D, got {ids.ndim}-D")
        stream = torch.as_tensor(ids.astype(np.int64))
    else:
        if tokenizer is None:
            raise ValueError(f"{data}: a text corpus needs the model's tokenizer")
        if not seq_len:
            raise ValueError("--seq-len is required for a text corpus")
        eos = tokenizer.eos_token_id
        want = None if n_tokens is None else (n_tokens // seq_len) * seq_len
        chunks, have = [], 0
        for text in _iter_texts(data):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if eos is not None:
                ids = ids + [eos]
            chunks.append(ids)
            have += len(ids)
            if want is not None and have >= want:
                break
        stream = torch.tensor([t for c in chunks for t in c], dtype=torch.long)
    if not seq_len or seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2 (a sequence needs a next token), got {seq_len}")
    n_seq = stream.numel() // seq_len
    if n_tokens is not None:
        n_seq = min(n_seq, n_tokens // seq_len)
    return _check_nonempty(stream[: n_seq * seq_len].view(n_seq, seq_len), data, seq_len)


def load_token_shard(data, seq_len: int, tokenizer, n_tokens: int, shard: str | None,
                     skip_batch: int = 256) -> tuple[torch.Tensor, int]:
    """(sequences, index of the first) of the k-th of n contiguous slices of what
    `load_token_sequences(data, seq_len, tokenizer, n_tokens)` returns, reading no document past
    the slice's end.

    Slices are planned on the budget (n_tokens // seq_len sequences); when the corpus is shorter,
    the last slices are shorter, so the shards stay disjoint and still cover what is there.
    Packing makes where a sequence starts depend on the token count of every earlier document, so
    the documents before the slice are tokenized to be counted only: `skip_batch` at a time
    (the fast tokenizer's batch path), their ids dropped at once. That is a few seconds per
    10M tokens against minutes of forward-backward; a pre-tokenized .npy skips for free.
    """
    data = str(data)
    if not seq_len or seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2 (a sequence needs a next token), got {seq_len}")
    if n_tokens is None or n_tokens < seq_len:
        raise ValueError(f"--tokens ({n_tokens}) must cover at least one sequence of {seq_len}")
    start, stop = shard_bounds(n_tokens // seq_len, shard)
    if data.endswith(".npy"):
        full = load_token_sequences(data, seq_len, tokenizer, n_tokens)
        return _check_nonempty(full[start:stop], f"{data} shard {shard}", seq_len), start
    if tokenizer is None:
        raise ValueError(f"{data}: a text corpus needs the model's tokenizer")
    if not data.startswith("hf:") and not Path(data).exists():
        raise ValueError(f"{data}: no such corpus file or directory")
    first, last = start * seq_len, stop * seq_len
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    pos, kept, batch = 0, [], []  # pos: stream tokens before the next document

    def take(docs):
        nonlocal pos
        for ids in docs:
            ids = ids + eos
            if pos + len(ids) > first and pos < last:
                kept.append(ids[max(first - pos, 0):last - pos])
            pos += len(ids)

    for text in _iter_texts(data):
        if pos < first:  # before the slice: count in batches
            batch.append(text)
            if len(batch) == skip_batch:
                take(tokenizer(batch, add_special_tokens=False)["input_ids"])
                batch = []
        else:
            take([tokenizer(text, add_special_tokens=False)["input_ids"]])
        if pos >= last:
            break
    if batch:  # the corpus ended inside the skipped part
        take(tokenizer(batch, add_special_tokens=False)["input_ids"])
    stream = torch.tensor([t for c in kept for t in c], dtype=torch.long)
    n_seq = stream.numel() // seq_len
    if n_seq == 0:
        raise ValueError(f"{data}: shard {shard} starts at sequence {start} of the "
                         f"{n_tokens // seq_len} planned on --tokens {n_tokens}, but the corpus "
                         f"ends at sequence {pos // seq_len}; lower --tokens to what it holds")
    return stream[: n_seq * seq_len].view(n_seq, seq_len), start


def write_token_stream(data, tokenizer, n_tokens: int, out) -> dict:
    """Pre-tokenize a corpus once: the first `n_tokens` of its EOS-joined token stream, as a 1-D
    .npy (int32 when the vocabulary fits), read no further than that. Collection packs it
    exactly as it packs the text itself (`load_token_sequences`), so every sequence, fingerprint
    and shard is the same, and a GPU job reading it never touches the network."""
    from curvmem.io import atomic_output

    if n_tokens is None or n_tokens < 1:
        raise ValueError(f"--tokens must be positive, got {n_tokens}")
    if str(out)[-4:] != ".npy":
        raise ValueError(f"--out must be a .npy file, got {out}")
    eos = [] if tokenizer.eos_token_id is None else [tokenizer.eos_token_id]
    ids, have, docs = [], 0, 0
    for text in _iter_texts(str(data)):
        doc = tokenizer(text, add_special_tokens=False)["input_ids"] + eos
        ids.append(doc)
        have, docs = have + len(doc), docs + 1
        if have >= n_tokens:
            break
    if have == 0:
        raise ValueError(f"{data}: the corpus yields no tokens")
    dtype = np.int32 if len(tokenizer) < 2**31 else np.int64
    stream = np.fromiter((t for d in ids for t in d), dtype=dtype, count=have)[:n_tokens]
    with atomic_output(out) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, stream, allow_pickle=False)
    return {"tokens": int(stream.size), "documents": docs, "asked": n_tokens,
            "short": bool(stream.size < n_tokens)}


def write_texts(data, out, rows: int | None = None) -> int:
    """The texts of a corpus (e.g. a streamed `hf:` dataset) as JSONL {"text"}, at most `rows`."""
    from curvmem.io import atomic_output

    n = 0
    with atomic_output(out) as tmp, open(tmp, "w") as f:
        for text in _iter_texts(str(data)):
            if rows is not None and n >= rows:
                break
            f.write(json.dumps({"text": text}) + "\n")
            n += 1
        if n == 0:
            raise ValueError(f"{data}: no rows")
    return n


def token_array_shard(path, seq_len: int | None, n_tokens: int | None, shard: str | None):
    """(sequences of shard k/n, index of the first, fingerprint of all sequences) of a .npy
    token file, memory-mapped: only the shard's rows are read into memory, the rest only
    hashed, so the fingerprint is `fingerprint_tensor` of what `load_token_sequences` returns."""
    ids = np.load(str(path), mmap_mode="r", allow_pickle=False)
    if ids.ndim == 1:
        if not seq_len or seq_len < 2:
            raise ValueError(f"--seq-len must be >= 2 (a sequence needs a next token), got "
                             f"{seq_len}")
        n_seq = ids.shape[0] // seq_len
        ids = ids[: n_seq * seq_len].reshape(n_seq, seq_len)
    elif ids.ndim == 2:
        if seq_len not in (None, ids.shape[1]):
            raise ValueError(f"{path}: 2-D token array has sequences of {ids.shape[1]} tokens, "
                             f"but --seq-len is {seq_len}; pass --seq-len {ids.shape[1]}")
        seq_len = ids.shape[1]
    else:
        raise ValueError(f"{path}: token array must be 1-D or 2-D, got {ids.ndim}-D")
    n_seq = ids.shape[0] if n_tokens is None else min(ids.shape[0], n_tokens // seq_len)
    ids = ids[:n_seq]
    _check_nonempty(torch.empty(n_seq, 0), str(path), seq_len)
    start, stop = shard_bounds(n_seq, shard)
    h = hashlib.sha256(json.dumps([n_seq, seq_len]).encode())
    for s in range(0, n_seq, 4096):  # as fingerprint_tensor, in int64, a block at a time
        h.update(np.ascontiguousarray(ids[s:s + 4096], dtype=np.int64).tobytes())
    seqs = torch.from_numpy(np.array(ids[start:stop], dtype=np.int64))  # a copy: writable
    return seqs, start, h.hexdigest()[:16]


def _check_nonempty(seqs: torch.Tensor, data: str, seq_len: int) -> torch.Tensor:
    if seqs.shape[0] == 0:
        raise ValueError(f"{data}: the corpus yields no complete sequence of {seq_len} tokens "
                         "(empty corpus, or --tokens smaller than --seq-len)")
    return seqs


def parse_shard(shard: str | None) -> tuple[int, int]:
    """'k/n' -> (k, n), 0 <= k < n. None -> (0, 1)."""
    if shard in (None, ""):
        return 0, 1
    try:
        k, n = (int(x) for x in str(shard).split("/"))
    except ValueError:
        raise ValueError(f"--shard must look like k/n (e.g. 0/4), got '{shard}'") from None
    if not (n >= 1 and 0 <= k < n):
        raise ValueError(f"--shard {shard}: need 0 <= k < n (shards are numbered from 0)")
    return k, n


def shard_bounds(n_items: int, shard: str | None) -> tuple[int, int]:
    """[start, stop) of the k-th of n contiguous, disjoint slices of n_items."""
    k, n = parse_shard(shard)
    if n > n_items:
        raise ValueError(f"--shard {shard}: more shards than the {n_items} sequences available")
    return k * n_items // n, (k + 1) * n_items // n


def fingerprint_tensor(t: torch.Tensor) -> str:
    """Content and packing: the same stream cut into other sequence lengths differs."""
    h = hashlib.sha256(json.dumps(list(t.shape)).encode())
    h.update(t.contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------- memorized content

MEMORIZED_NGRAM = 16  # tokens: long enough that grammar text does not match a window by chance


def memorized_windows(paths, tokenizer) -> list[list[int]]:
    """Token ids of every item of memorized-set files (JSONL): prefix_ids + suffix_ids, prefix +
    suffix (or target_suffix) texts, or the text itself; the formats `evaluate memorization` reads."""
    from curvmem.io import read_jsonl

    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    windows = []
    for path in paths:
        for i, row in enumerate(read_jsonl(path), 1):
            if "prefix_ids" in row and "suffix_ids" in row:
                windows.append(list(row["prefix_ids"]) + list(row["suffix_ids"]))
            elif "prefix" in row and ("suffix" in row or "target_suffix" in row):
                windows.append(ids(row["prefix"]) + ids(row.get("suffix", row.get("target_suffix"))))
            elif "text" in row:
                windows.append(ids(row["text"]))
            else:
                raise ValueError(f"{path} row {i}: not a memorized item (needs text, prefix and "
                                 f"suffix, or prefix_ids and suffix_ids; has {sorted(row)})")
    return windows


def count_memorized_positions(seqs: torch.Tensor, windows: list[list[int]],
                              n: int = MEMORIZED_NGRAM) -> int:
    """Positions of the packed stream `seqs` covered by an n-token run that also occurs in a
    memorized item: how much of the curvature data is memorized content (0 for a clean corpus).
    Windows shorter than n count as a whole."""
    stream = seqs.reshape(-1).tolist()
    grams = {}
    for w in windows:
        k = min(n, len(w))
        for i in range(len(w) - k + 1):
            grams.setdefault(k, set()).add(tuple(w[i:i + k]))
    covered = bytearray(len(stream))
    for k, known in grams.items():
        for i in range(len(stream) - k + 1):
            if tuple(stream[i:i + k]) in known:
                covered[i:i + k] = b"\x01" * k
    return sum(covered)
