"""LM evaluations: memorization, perplexity, tasks, coherence.

Each evaluation takes any HF causal LM (and its tokenizer) and returns a JSON-able dict; the CLI
adds the edit's sidecar meta and the cost. Definitions (also in docs/lm.md):

    memorization  greedy |S| tokens from the prefix; d = token-level Levenshtein distance to the
                  true suffix S. strict: d == 0; loose: 1 - d/|S| >= 0.75; avg_distance: mean d/|S|.
                  suffix_loss: teacher-forced cross-entropy of S given the prefix, in nats per
                  token: the mean over items of -1/|S| sum_t log p(S_t | prefix, S_<t)
    memorization gap  on a memorized set and never-trained items of the same kinds (controls):
                  control minus memorized suffix_loss, and control minus memorized avg_distance
                  (memorization_gap), per kind and overall
    perplexity    held-out text, EOS-joined, cut into fixed blocks (112 tokens). Reported both as
                  exp(mean token loss) and the paper's way, mean over batches of exp(batch loss);
                  and each block's mean token loss
    tasks         greedy exact match of the answer, per category and subcategory, and per item
    coherence     nDCG@10 of the edited model's top-10 next tokens, graded by the unedited model's
                  ranking: the base model's rank-r token (r = 1..10) has relevance 11 - r, others 0
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch
from rapidfuzz.distance import Levenshtein

from curvmem.io import read_jsonl
from curvmem.model.adapters import model_device

LOOSE_THRESHOLD = 0.75  # loose memorization: 1 - d/|S| >= this

# --------------------------------------------------------------------------- generation


@torch.no_grad()
def greedy_continue(model, prefix: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy `n_new` tokens after each row of `prefix` [B, P] (same length, so no padding).

    Uses the KV cache when the model returns one, else re-runs the whole sequence.
    """
    prefix = prefix.to(model_device(model))
    ids, out, new = prefix, model(input_ids=prefix, use_cache=True), []
    for step in range(n_new):
        nxt = out.logits[:, -1].argmax(-1)
        new.append(nxt)
        if step == n_new - 1:
            break
        ids = torch.cat([ids, nxt[:, None]], dim=1)
        past = getattr(out, "past_key_values", None)
        if past is not None:
            out = model(input_ids=nxt[:, None], past_key_values=past, use_cache=True)
        else:
            out = model(input_ids=ids)
    return torch.stack(new, dim=1).cpu()


def _by_length(items: list, key, batch_size: int):
    """Batches of indices into `items` whose key (a length) is equal: greedy runs need no padding."""
    groups = defaultdict(list)
    for i, item in enumerate(items):
        groups[key(item)].append(i)
    for _, idx in sorted(groups.items()):
        for k in range(0, len(idx), batch_size):
            yield idx[k:k + batch_size]


def _progress(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not progress, mininterval=1.0)


# --------------------------------------------------------------------------- memorization


def memorization_examples(rows: list[dict], tokenizer, prefix_len: int = 64,
                          suffix_len: int = 48, where: str = "data") -> list[dict]:
    """(prefix ids, suffix ids, kind) per row, from any of the accepted formats.

    prefix_ids/suffix_ids (token ids, used as given: the paper's memorized-window files and
    `curvmem mine`'s), prefix/suffix or prefix/target_suffix (texts, e.g. the paper's quotes
    file; the suffix's length is its own), or text (cut into prefix_len + suffix_len tokens).
    """
    if prefix_len < 1 or suffix_len < 1:
        raise ValueError(f"prefix and suffix lengths must be >= 1, got {prefix_len}, {suffix_len}")
    # an HF tokenizer's len() counts its added tokens too; a stand-in without one is not checked
    vocab = len(tokenizer) if hasattr(tokenizer, "__len__") else None
    out = []
    for i, row in enumerate(rows, 1):
        suffix_key = "suffix" if "suffix" in row else "target_suffix"
        if "prefix_ids" in row and "suffix_ids" in row:
            prefix, suffix = list(row["prefix_ids"]), list(row["suffix_ids"])
            bad = [t for t in prefix + suffix
                   if isinstance(t, bool) or not isinstance(t, int) or t < 0
                   or (vocab is not None and t >= vocab)]
            if bad:  # ids of another tokenizer would index garbage (or crash the embedding)
                raise ValueError(f"{where} row {i}: token id {bad[0]!r} is not in the "
                                 f"tokenizer's vocabulary ({vocab} ids); were these ids made "
                                 "with another tokenizer?")
        elif "prefix" in row and suffix_key in row:
            prefix = tokenizer(row["prefix"], add_special_tokens=False)["input_ids"]
            suffix = tokenizer(row[suffix_key], add_special_tokens=False)["input_ids"]
        elif "text" in row:
            ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
            if len(ids) < prefix_len + suffix_len:
                raise ValueError(
                    f"{where} row {i}: has {len(ids)} tokens, fewer than prefix {prefix_len} + "
                    f"suffix {suffix_len}; lower --prefix-len/--suffix-len or drop the row")
            prefix, suffix = ids[:prefix_len], ids[prefix_len:prefix_len + suffix_len]
        else:
            raise ValueError(f"{where} row {i}: needs 'text', or 'prefix' and 'suffix' (or "
                             "'target_suffix'), or 'prefix_ids' and 'suffix_ids'; "
                             f"has {sorted(row)}")
        if not prefix or not suffix:
            raise ValueError(f"{where} row {i}: empty prefix or suffix")
        out.append({"prefix": prefix, "suffix": suffix, "kind": str(row.get("kind", "all")),
                    "id": row.get("id", i - 1)})
    return out


def memorization_scores(distances: list[int], lengths: list[int],
                        losses: list[float] | None = None) -> dict:
    """strict / loose / avg_distance (fractions) from Levenshtein distances and suffix lengths;
    with `losses` (each item's suffix cross-entropy, nats/token), their mean as suffix_loss."""
    if not distances:
        return {"n": 0, "strict": None, "loose": None, "avg_distance": None,
                **({"suffix_loss": None} if losses is not None else {})}
    norm = [d / n for d, n in zip(distances, lengths)]
    out = {"n": len(norm),
           "strict": sum(d == 0 for d in distances) / len(norm),
           "loose": sum(1 - x >= LOOSE_THRESHOLD for x in norm) / len(norm),
           "avg_distance": sum(norm) / len(norm)}
    if losses is not None:
        out["suffix_loss"] = sum(losses) / len(losses)
    return out


@torch.no_grad()
def suffix_losses(model, prefixes: list[list[int]], suffixes: list[list[int]]) -> list[float]:
    """Teacher-forced cross-entropy of each suffix given its prefix, in nats per suffix token
    (rows of one prefix length and one suffix length: one forward pass, no padding)."""
    ids = torch.tensor([p + s[:-1] for p, s in zip(prefixes, suffixes)])
    target = torch.tensor(suffixes)
    start = len(prefixes[0]) - 1  # the logits at position t predict token t + 1
    logits = model(input_ids=ids.to(model_device(model))).logits[:, start:].float().cpu()
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    return loss.mean(1).tolist()


def memorization_gap(memorized: dict, control: dict) -> dict:
    """Control minus memorized suffix_loss and avg_distance (two evaluate_memorization results:
    a memorized set and never-trained items of the same kinds), overall and for each kind both
    have. Positive: the memorized items are predicted better than their genre alone explains."""
    def gap(m, c):
        return {key: (c[key] - m[key] if m.get(key) is not None and c.get(key) is not None
                      else None) for key in ("suffix_loss", "avg_distance")}

    kinds = sorted(set(memorized.get("by_kind", {})) & set(control.get("by_kind", {})))
    return {**gap(memorized, control),
            "by_kind": {k: gap(memorized["by_kind"][k], control["by_kind"][k]) for k in kinds}}


def evaluate_memorization(model, tokenizer, rows: list[dict], prefix_len: int = 64,
                          suffix_len: int = 48, batch_size: int = 32, progress: bool = False,
                          where: str = "data") -> dict:
    examples = memorization_examples(rows, tokenizer, prefix_len, suffix_len, where)
    bar = _progress(len(examples), "memorization", progress)
    for idx in _by_length(examples, lambda e: (len(e["prefix"]), len(e["suffix"])), batch_size):
        prefix = torch.tensor([examples[i]["prefix"] for i in idx])
        generated = greedy_continue(model, prefix, len(examples[idx[0]]["suffix"])).tolist()
        losses = suffix_losses(model, [examples[i]["prefix"] for i in idx],
                               [examples[i]["suffix"] for i in idx])
        for i, gen, loss in zip(idx, generated, losses):
            examples[i]["distance"] = Levenshtein.distance(gen, examples[i]["suffix"])
            examples[i]["suffix_loss"] = loss
        bar.update(len(idx))
    bar.close()
    def scores(items):
        return memorization_scores([e["distance"] for e in items],
                                   [len(e["suffix"]) for e in items],
                                   [e["suffix_loss"] for e in items])

    result = scores(examples)
    kinds = sorted({e["kind"] for e in examples})
    result["by_kind"] = {k: scores([e for e in examples if e["kind"] == k]) for k in kinds}
    result["prefix_len"], result["suffix_len"] = prefix_len, suffix_len
    result["examples"] = [{"id": e["id"], "kind": e["kind"], "distance": e["distance"],
                           "suffix_len": len(e["suffix"]), "suffix_loss": e["suffix_loss"]}
                          for e in examples]
    return result


# --------------------------------------------------------------------------- perplexity


def token_blocks(texts: list[str], tokenizer, block_len: int, max_tokens: int | None = None,
                 where: str = "data") -> torch.Tensor:
    """Texts joined by EOS and cut into [n, block_len] blocks (the remainder is dropped)."""
    if block_len < 2:
        raise ValueError(f"--block-len must be >= 2, got {block_len}")
    eos = tokenizer.eos_token_id
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
        stream += ids + ([eos] if eos is not None else [])
        if max_tokens and len(stream) >= max_tokens:
            break
    if max_tokens:
        stream = stream[:max_tokens]
    n = len(stream) // block_len
    if n == 0:
        raise ValueError(f"{where}: {len(stream)} tokens, fewer than one block of {block_len}; "
                         "give more text or a smaller --block-len")
    return torch.tensor(stream[: n * block_len]).view(n, block_len)


@torch.no_grad()
def evaluate_perplexity(model, tokenizer, texts: list[str], block_len: int = 112,
                        batch_size: int = 8, max_tokens: int | None = None,
                        progress: bool = False, where: str = "data") -> dict:
    blocks = token_blocks(texts, tokenizer, block_len, max_tokens, where)
    total_loss, total_tokens, batch_ppl, block_losses = 0.0, 0, [], []
    bar = _progress(len(blocks), "perplexity", progress)
    device = model_device(model)
    for k in range(0, len(blocks), batch_size):
        batch = blocks[k:k + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, 1:],
                                                   reduction="none").double()
        loss = losses.sum().item()
        n = batch[:, 1:].numel()
        total_loss += loss
        total_tokens += n
        batch_ppl.append(math.exp(loss / n))
        block_losses += losses.mean(1).tolist()
        bar.update(len(batch))
    bar.close()
    return {"perplexity": math.exp(total_loss / total_tokens),
            "perplexity_batch_mean": sum(batch_ppl) / len(batch_ppl),
            "mean_loss": total_loss / total_tokens, "n_tokens": total_tokens,
            "n_blocks": len(blocks), "block_len": block_len, "batch_size": batch_size,
            # each block's mean token loss (nats), in block order: blocks pair across models
            "block_losses": [round(x, 6) for x in block_losses]}


# --------------------------------------------------------------------------- tasks


def answer_matches(generated: str, answer: str) -> bool:
    """Exact match of the answer at the start of the continuation, ending at a word boundary."""
    text, answer = generated.lstrip(), answer.strip()
    if not text.startswith(answer):
        return False
    rest = text[len(answer):]
    return not rest or not rest[0].isalnum()


def evaluate_tasks(model, tokenizer, rows: list[dict], batch_size: int = 32,
                   progress: bool = False) -> dict:
    items = []
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        answer = tokenizer(" " + str(row["answer"]).strip(), add_special_tokens=False)["input_ids"]
        if not prompt:
            raise ValueError(f"task prompt is empty: {row}")
        # one token more than the answer needs, to see whether the word ends there
        items.append({"prompt": prompt, "n_new": len(answer) + 1, "row": row})
    bar = _progress(len(items), "tasks", progress)
    for idx in _by_length(items, lambda it: (len(it["prompt"]), it["n_new"]), batch_size):
        prefix = torch.tensor([items[i]["prompt"] for i in idx])
        generated = greedy_continue(model, prefix, items[idx[0]]["n_new"])
        for i, gen in zip(idx, generated.tolist()):
            text = tokenizer.decode(gen, skip_special_tokens=False)
            items[i]["correct"] = answer_matches(text, str(items[i]["row"]["answer"]))
            items[i]["output"] = tokenizer.decode(gen, skip_special_tokens=True)
        bar.update(len(idx))
    bar.close()
    by_cat, by_sub = defaultdict(list), defaultdict(list)
    for it in items:
        by_cat[it["row"]["category"]].append(it["correct"])
        if it["row"].get("subcategory"):  # optional: e.g. logic/order against logic/boolean
            by_sub[f'{it["row"]["category"]}/{it["row"]["subcategory"]}'].append(it["correct"])
    return {"accuracy": {c: sum(v) / len(v) for c, v in sorted(by_cat.items())},
            "n": {c: len(v) for c, v in sorted(by_cat.items())},
            "accuracy_by_subcategory": {c: sum(v) / len(v) for c, v in sorted(by_sub.items())},
            "n_by_subcategory": {c: len(v) for c, v in sorted(by_sub.items())},
            "overall": sum(it["correct"] for it in items) / len(items),
            # what the model said, item by item, to see how it fails (not only how often), in
            # the task file's order: "id" is the row's own id, else its index in the file, so
            # two evaluations of one file pair item by item (paired bootstraps)
            "items": [{"id": it["row"].get("id", i), "category": it["row"]["category"],
                       "subcategory": it["row"].get("subcategory"),
                       "prompt": it["row"]["prompt"], "answer": str(it["row"]["answer"]),
                       "output": it["output"], "correct": it["correct"]}
                      for i, it in enumerate(items)]}


# --------------------------------------------------------------------------- coherence


def ndcg_at_k(reference_topk: torch.Tensor, candidate_topk: torch.Tensor) -> torch.Tensor:
    """nDCG@k per row: relevance of the reference's rank-r token is k + 1 - r, others 0."""
    k = reference_topk.shape[-1]
    discount = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    relevance_by_rank = torch.arange(k, 0, -1, dtype=torch.float64)  # k, k-1, ..., 1
    match = candidate_topk[..., :, None] == reference_topk[..., None, :]  # [..., cand, ref]
    relevance = (match.to(torch.float64) * relevance_by_rank).sum(-1)
    return (relevance * discount).sum(-1) / (relevance_by_rank * discount).sum()


@torch.no_grad()
def topk_next_tokens(model, blocks: torch.Tensor, k: int, batch_size: int) -> torch.Tensor:
    device = model_device(model)
    return torch.cat([model(input_ids=blocks[i:i + batch_size].to(device)).logits
                      .topk(k, dim=-1).indices.cpu() for i in range(0, len(blocks), batch_size)])


def evaluate_coherence(model, tokenizer, texts: list[str], apply_edit, k: int = 10,
                       block_len: int = 112, batch_size: int = 8, max_tokens: int = 8192,
                       where: str = "data") -> dict:
    """Top-k next tokens at every position before and after `apply_edit(model)`; mean nDCG@k."""
    blocks = token_blocks(texts, tokenizer, block_len, max_tokens, where)
    base = topk_next_tokens(model, blocks, k, batch_size)
    meta = apply_edit(model)
    edited = topk_next_tokens(model, blocks, k, batch_size)
    scores = ndcg_at_k(base, edited)
    return {"ndcg10" if k == 10 else f"ndcg{k}": scores.mean().item(), "k": k,
            "n_positions": scores.numel(), "top1_agreement": (base[..., 0] == edited[..., 0])
            .float().mean().item(), "block_len": block_len, "edit_meta": meta}


# --------------------------------------------------------------------------- data files


def read_rows(path, required=()) -> list[dict]:
    return read_jsonl(path, required)


def read_texts(path) -> list[str]:
    return [str(r["text"]) for r in read_jsonl(path, ("text",))]
