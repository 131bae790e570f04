"""Mining memorized windows from a corpus (`curvmem mine`), as the paper built its Dolma set.

A window is prefix_len + suffix_len consecutive tokens of one document (windows never cross a
document boundary), taken at offsets 0, stride, 2·stride, ... It is memorized when, teacher-forced
on the whole window, the model's argmax at every suffix position equals the true next token. That
is exactly "greedy decoding from the prefix reproduces the suffix" (each greedy step sees the same
context as the teacher-forced one as long as all earlier tokens matched), but costs one forward
pass per window instead of suffix_len.

Windows are deduplicated by their suffix ids (the first in corpus order is kept); a window whose
ids were already checked, or whose suffix is already in the set, is not run again, which matters
for corpora with repeated documents. Rows carry the ids, their decoded texts, the lengths, and
where the window was found (doc_index, token_offset), in the format of the paper's released files,
which `curvmem evaluate memorization` reads.
"""

from __future__ import annotations

import hashlib
import json
import random

import torch

from curvmem.io import atomic_output
from curvmem.model.adapters import model_device


def check_lengths(prefix_len: int, suffix_len: int, stride: int, batch_size: int) -> None:
    for name, v in (("--prefix-len", prefix_len), ("--suffix-len", suffix_len),
                    ("--stride", stride), ("--batch-size", batch_size)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")


def document_windows(ids: list[int], window: int, stride: int):
    """(offset, ids) of every whole window of one document."""
    for off in range(0, len(ids) - window + 1, stride):
        yield off, ids[off:off + window]


@torch.no_grad()
def memorized(model, windows: torch.Tensor, prefix_len: int) -> torch.Tensor:
    """Bool [B]: teacher-forced argmax equals the token at every suffix position of each window.

    The last token is never an input, and only the logits that predict suffix tokens are formed
    (`logits_to_keep`): with a 100k vocabulary those are most of a forward pass's memory.
    """
    windows = windows.to(model_device(model))
    inputs, suffix = windows[:, :-1], windows[:, prefix_len:]
    n = suffix.shape[1]
    try:
        logits = model(input_ids=inputs, logits_to_keep=n).logits
    except TypeError:  # an older or custom model without logits_to_keep
        logits = model(input_ids=inputs).logits
    return (logits[:, -n:].argmax(-1) == suffix).all(dim=1).cpu()


def _key(ids) -> bytes:
    return hashlib.blake2b(json.dumps(list(ids)).encode(), digest_size=16).digest()


def mine(model, tokenizer, texts, prefix_len: int = 64, suffix_len: int = 48, stride: int = 32,
         batch_size: int = 32, max_tokens: int | None = None, progress: bool = False
         ) -> tuple[list[dict], dict]:
    """Memorized windows of the documents `texts` (an iterable, read lazily). Returns (rows, stats).

    max_tokens: stop reading documents once this many tokens have been read (the document that
    crosses it is still used whole).
    """
    from tqdm import tqdm

    check_lengths(prefix_len, suffix_len, stride, batch_size)
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"--tokens must be positive, got {max_tokens}")
    window = prefix_len + suffix_len
    rows: list[dict] = []
    seen_windows: set[bytes] = set()  # ids already checked: identical windows give one answer
    found_suffixes: set[bytes] = set()
    stats = {"documents": 0, "tokens": 0, "windows": 0, "windows_checked": 0,
             "short_documents": 0, "duplicates": 0}
    pending: list[tuple[int, int, list[int]]] = []
    bar = tqdm(desc="mine", unit="tok", unit_scale=True, disable=not progress, mininterval=1.0)

    def flush():
        if not pending:
            return
        hits = memorized(model, torch.tensor([p[2] for p in pending]), prefix_len).tolist()
        stats["windows_checked"] += len(pending)
        for (doc, off, ids), hit in zip(pending, hits):
            suffix_key = _key(ids[prefix_len:])
            if not hit:
                continue
            if suffix_key in found_suffixes:  # same suffix found twice inside one batch
                stats["duplicates"] += 1
                continue
            found_suffixes.add(suffix_key)
            prefix, suffix = ids[:prefix_len], ids[prefix_len:]
            rows.append({"prefix_ids": prefix, "suffix_ids": suffix,
                         "prefix_text": tokenizer.decode(prefix),
                         "suffix_text": tokenizer.decode(suffix),
                         "prefix_len": prefix_len, "suffix_len": suffix_len,
                         "doc_index": doc, "token_offset": off})
        pending.clear()

    for doc, text in enumerate(texts):
        if max_tokens is not None and stats["tokens"] >= max_tokens:
            break
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        stats["documents"] += 1
        stats["tokens"] += len(ids)
        bar.update(len(ids))
        if len(ids) < window:
            stats["short_documents"] += 1
            continue
        for off, w in document_windows(ids, window, stride):
            stats["windows"] += 1
            key = _key(w)
            if key in seen_windows or _key(w[prefix_len:]) in found_suffixes:
                stats["duplicates"] += 1
                continue
            seen_windows.add(key)
            pending.append((doc, off, w))
            if len(pending) == batch_size:
                flush()
    flush()
    bar.close()
    stats["memorized"] = len(rows)
    return rows, stats


def split_rows(rows: list[dict], validation_fraction: float, seed: int
               ) -> tuple[list[dict], list[dict]]:
    """A seeded shuffle cut into (train, validation); each part keeps corpus order."""
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction must be in [0, 1), got {validation_fraction}")
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n_val = round(len(rows) * validation_fraction)
    val = set(order[:n_val])
    return ([r for i, r in enumerate(rows) if i not in val],
            [r for i, r in enumerate(rows) if i in val])


def write_rows(path, rows: list[dict]) -> None:
    """JSONL, atomically (an empty file when nothing was found: that is a result too)."""
    with atomic_output(path) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
