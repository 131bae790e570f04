"""Positional stress test (the paper's Table 6; variants as in its code,
metrics/position_perturb_eval.py, after Huang et al. 2024).

For a memorized item with prefix x_1..x_n and gold continuation s_1..s_k, and t = 20:
    extend     x_1..x_n s_1..s_i, i = 1..min(t, k): the prompt runs on into the gold text; the
               score compares with the remaining gold continuation s_{i+1}..s_k
    shift      x_{n-m+1}..x_n, m = t+1..n-1: suffixes of the prefix (less left context)
    preceding  p_{-i}..p_{-1} x_1..x_n, i = 1..t: up to t tokens of the true preceding text, only
               where a row gives it (`preceding_ids` or `preceding`); the embedded world's
               canaries are whole training documents, so they have none and get no such variant
The unperturbed prompt is excluded (the code's default). Each prompt is decoded greedily; its
score is the length of the longest exact-match prefix against the (remaining) gold continuation
(decoding stops once every prompt of a batch has missed: the score cannot grow after a miss).
An item's perturbed score is the max over its variants. The paper's "left-extended" family is
the code's x_1..x_{n+i} (extend above).

Batches are left-padded with an attention mask and explicit position ids, so every prompt sees the
positions it would see alone. The paper's code right-pads prompts of unequal length, so a shorter
prompt's continuation starts after pad tokens: an artefact we do not reproduce.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from curvmem.analysis.common import save_figure

# Existing curvmem names used here:
from curvmem.edit import apply, restored_after
from curvmem.evaluate.lm import memorization_examples
from curvmem.model import model_device

DEFINITION = (
    "Variants per item (prefix x_1..x_n, gold s_1..s_k, t): extend x_1..x_n s_1..s_i for "
    "i = 1..min(t,k) (scored on s_{i+1}..s_k); shift x_{n-m+1}..x_n for m = t+1..n-1; preceding "
    "p_{-i}..p_{-1} x_1..x_n for i = 1..t where the row gives preceding text. Unperturbed prompt "
    "excluded; duplicates dropped. Greedy decoding (up to the remaining gold length), left-padded "
    "batches with attention mask and position ids. score = longest exact-match prefix of the generation vs the remaining gold; "
    "original = score of the unperturbed prompt; perturbed = max over variants; mean and "
    "population std over items, pooled and per kind (summary[name].by_kind).")


def variants(prefix: list[int], suffix: list[int], t: int = 20,
             preceding: list[int] | None = None) -> list[tuple[list[int], int, str]]:
    """(prompt, gold offset, family) for one item, unperturbed prompt excluded, no duplicates."""
    n, k = len(prefix), len(suffix)
    out = [(prefix + suffix[:i], i, "extend") for i in range(1, min(t, k) + 1)]
    out += [(prefix[n - m:], 0, "shift") for m in range(t + 1, n)]
    if preceding:
        out += [(preceding[-i:] + prefix, 0, "preceding")
                for i in range(1, min(t, len(preceding)) + 1)]
    seen, unique = set(), []
    for prompt, off, family in out:
        if tuple(prompt) not in seen and prompt != prefix:
            seen.add(tuple(prompt))
            unique.append((prompt, off, family))
    return unique


@torch.no_grad()
def exact_match_lengths(model, prompts: list[list[int]], golds: list[list[int]], pad_id: int = 0,
                        batch_size: int = 64) -> list[int]:
    """Per prompt, the length of the longest prefix of `gold` that greedy decoding reproduces.

    Prompts of any lengths run in left-padded batches (attention mask, position ids counted from
    each prompt's first real token). A row leaves its batch (and the KV cache) once it has missed
    a gold token or used up its gold: later tokens cannot lengthen an exact-match prefix; the
    batch stops when no row is left."""
    device = model_device(model)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # less padding
    out = [0] * len(prompts)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for b, i in enumerate(idx):
            ids[b, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[b, width - len(prompts[i]):] = 1
        n_gold = torch.tensor([len(golds[i]) for i in idx])
        gold = torch.full((len(idx), int(n_gold.max())), -1, dtype=torch.long)
        for b, i in enumerate(idx):
            gold[b, :len(golds[i])] = torch.tensor(golds[i], dtype=torch.long)
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(1) - 1).clamp_min(0)
        res = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        rows = torch.arange(len(idx))  # the batch's rows still decoding, as indices into idx
        length = torch.zeros(len(idx), dtype=torch.long)
        for step in range(gold.shape[1]):
            nxt = res.logits[:, -1].argmax(-1)
            hit = (step < n_gold[rows]) & (nxt.cpu() == gold[rows, step])
            length[rows[hit]] += 1
            keep = hit & (step + 1 < n_gold[rows])  # may still lengthen its match
            if not keep.any():
                break
            cache = res.past_key_values
            if not keep.all():  # drop finished rows from the batch and the cache
                sel = keep.nonzero().flatten()
                cache.batch_select_indices(sel.to(device))
                rows, nxt, mask, pos = rows[sel], nxt[sel.to(device)], mask[sel.to(device)], \
                    pos[sel.to(device)]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            res = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=pos,
                        past_key_values=cache, use_cache=True)
        for b, i in enumerate(idx):
            out[i] = int(length[b])
    return out


def _mean_std(xs: list[int]) -> dict:
    m = sum(xs) / len(xs)
    return {"mean": m, "std": math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))}


def score_items(model, items: list[dict], t: int, pad_id: int, batch_size: int) -> list[dict]:
    """Original and perturbed exact-match lengths per item (all prompts batched together)."""
    prompts, golds, owners = [], [], []
    for j, it in enumerate(items):
        prompts.append(it["prefix"])
        golds.append(it["suffix"])
        owners.append((j, "original"))
        for prompt, off, family in variants(it["prefix"], it["suffix"], t, it.get("preceding")):
            prompts.append(prompt)
            golds.append(it["suffix"][off:])
            owners.append((j, family))
    lengths = exact_match_lengths(model, prompts, golds, pad_id, batch_size)
    scores = [{"id": it["id"], "kind": it["kind"], "original": 0, "perturbed": 0,
               "best_family": None, "n_variants": 0} for it in items]
    for (j, family), m in zip(owners, lengths):
        if family == "original":
            scores[j]["original"] = m
            continue
        scores[j]["n_variants"] += 1
        if scores[j]["best_family"] is None or m > scores[j]["perturbed"]:
            scores[j]["perturbed"], scores[j]["best_family"] = m, family
    return scores


def stress_items(rows, tokenizer, prefix_len=64, suffix_len=48, max_per_kind=None,
                 where="memorized data") -> list[dict]:
    """The items the stress test perturbs: every row, or the first `max_per_kind` of each kind
    (a memorized file is ordered by kind: a cut of the file would keep its first kinds only).

    Args:
        rows: memorized rows (any format `memorization_examples` reads).
        tokenizer: the model's tokenizer.
        prefix_len: prefix tokens of rows given as text.
        suffix_len: suffix tokens of rows given as text.
        max_per_kind: items of each kind (None: every item).
        where: the file's name in errors.

    Returns:
        One dict per item (prefix, suffix, kind, id, and preceding where the row gives it).
    """
    items = memorization_examples(rows, tokenizer, prefix_len, suffix_len, where)
    for it, row in zip(items, rows):
        if "preceding_ids" in row:
            it["preceding"] = list(row["preceding_ids"])
        elif row.get("preceding"):
            it["preceding"] = tokenizer(row["preceding"], add_special_tokens=False)["input_ids"]
    if len({len(it["suffix"]) for it in items}) > 1:
        raise ValueError(f"{where}: the stress test needs suffixes of one length "
                         f"(got {sorted({len(it['suffix']) for it in items})})")
    taken, kept = Counter(), []
    for it in items:
        if max_per_kind is None or taken[it["kind"]] < max_per_kind:
            taken[it["kind"]] += 1
            kept.append(it)
    return kept


def summarize(scores: list[dict], suffix_len: int) -> dict:
    """Mean and std of the original and perturbed lengths, the share of items a variant
    lengthens and of full matches of the original prompt, and the count."""
    return {"original": _mean_std([s["original"] for s in scores]),
            "perturbed": _mean_std([s["perturbed"] for s in scores]),
            "improved_rate": sum(s["perturbed"] > s["original"] for s in scores) / len(scores),
            "full_match_rate_original": sum(s["original"] == suffix_len
                                            for s in scores) / len(scores),
            "n": len(scores)}


def stress_test(model, tokenizer, rows, edits: dict, t: int = 20, prefix_len: int = 64,
                suffix_len: int = 48, max_per_kind: int | None = None,
                batch_size: int = 64) -> dict:
    """Positional perturbations of every memorized item, for the base model and each edit,
    summarized over all items and per kind.

    Args:
        model: the language model (edits are applied in place and restored after).
        tokenizer: its tokenizer.
        rows: memorized rows (the workflow passes forget-validation: never the set a selection
            reads).
        edits: {name: edit file}; the unedited model is always scored as 'base'.
        t: perturbation size.
        prefix_len: prefix tokens of rows given as text.
        suffix_len: suffix tokens of rows given as text.
        max_per_kind: items of each kind (None: every item).
        batch_size: prompts per decoding batch.

    Returns:
        The JSON-able result; `summary[name]` pooled and `summary[name]["by_kind"]`.
    """
    if t < 0:
        raise ValueError(f"--t must be >= 0, got {t}")
    items = stress_items(rows, tokenizer, prefix_len, suffix_len, max_per_kind)
    if not items:
        raise ValueError("no memorized items")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    results = {"base": score_items(model, items, t, pad_id, batch_size)}
    for name, path in edits.items():
        with restored_after(model, path):
            apply(model, path)
            results[name] = score_items(model, items, t, pad_id, batch_size)
    k = len(items[0]["suffix"])
    kinds = list(dict.fromkeys(it["kind"] for it in items))
    summary = {name: {**summarize(sc, k),
                      "by_kind": {kind: summarize([s for s in sc if s["kind"] == kind], k)
                                  for kind in kinds}}
               for name, sc in results.items()}
    has_preceding = sum("preceding" in it for it in items)
    return {"analysis": "stress", "definition": DEFINITION,
            "params": {"t": t, "prefix_len": prefix_len, "suffix_len": suffix_len,
                       "max_per_kind": max_per_kind, "n_items": len(items), "gold_len": k,
                       "n_by_kind": {kind: sum(it["kind"] == kind for it in items)
                                     for kind in kinds},
                       "items_with_preceding_text": has_preceding,
                       "edits": {k: str(v) for k, v in edits.items()},
                       "padding": "left, with attention mask and position ids (the paper's code "
                                  "right-pads: an artefact)",
                       "preceding_text": "used for the items that give it" if has_preceding
                       else "none of the items gives preceding text: only extend and shift "
                            "variants apply"},
            "kinds": kinds, "summary": summary, "items": results}


def stress_figure(result: dict, path) -> None:
    """One panel for every item pooled, then one per kind: the original and the best perturbed
    prompt's mean exact-match length (± std) for the base model and each edit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["summary"])
    kinds = result.get("kinds", [])
    panels = [("all items", {n: result["summary"][n] for n in names})] + [
        (kind, {n: result["summary"][n]["by_kind"][kind] for n in names}) for kind in kinds]
    fig, axes = plt.subplots(1, len(panels), squeeze=False, sharey=True,
                             figsize=((1.0 * len(names) + 1.2) * len(panels) + 1, 4.0))
    x = np.arange(len(names))
    for ax, (title, summary) in zip(axes[0], panels):
        for k, (which, colour) in enumerate((("original", "tab:grey"), ("perturbed", "tab:red"))):
            means = [summary[n][which]["mean"] for n in names]
            stds = [summary[n][which]["std"] for n in names]
            pos = x + (k - 0.5) * 0.38
            ax.bar(pos, means, 0.36, yerr=stds, capsize=2, color=colour,
                   label={"original": "original prompt",
                          "perturbed": "best positional variant"}[which])
            for xi, m, sd in zip(pos, means, stds):  # the numbers, since bars may be near zero
                ax.annotate(f"{m:.1f}", (xi, m + sd), ha="center", fontsize=6,
                            xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, names, fontsize=7, rotation=30, ha="right")
        n = next(iter(summary.values()))["n"]
        ax.set_title(f"{title} (n = {n})", fontsize=9)
    axes[0, 0].set_ylabel("exact-match length (tokens), mean ± std")
    axes[0, 0].set_ylim(0, result["params"].get("gold_len", result["params"]["suffix_len"]) * 1.1)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.suptitle(f"Positional stress test (t = {result['params']['t']}), every item, by kind",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
