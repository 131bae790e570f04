"""LM evaluations (memorization, perplexity, tasks, coherence) and the LM report.

Each evaluation takes any HF causal LM (and its tokenizer) and returns a JSON-able dict; the CLI
adds the edit's sidecar meta and the cost. Definitions (also in docs/lm.md):

    memorization  greedy |S| tokens from the prefix; d = token-level Levenshtein distance to the
                  true suffix S. strict: d == 0; loose: 1 - d/|S| >= 0.75; avg_distance: mean d/|S|
    perplexity    held-out text, EOS-joined, cut into fixed blocks (112 tokens). Reported both as
                  exp(mean token loss) and the paper's way, mean over batches of exp(batch loss)
    tasks         greedy exact match of the answer, per category
    coherence     nDCG@10 of the edited model's top-10 next tokens, graded by the unedited model's
                  ranking: the base model's rank-r token (r = 1..10) has relevance 11 - r, others 0
"""

from __future__ import annotations

import json
import math
from collections import defaultdict

import torch
from rapidfuzz.distance import Levenshtein

from curvmem.models import model_device
from curvmem.store import read_jsonl

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

    prefix_ids/suffix_ids (token ids), prefix/suffix (texts; the suffix's length is its own), or
    text (cut into prefix_len + suffix_len tokens).
    """
    if prefix_len < 1 or suffix_len < 1:
        raise ValueError(f"prefix and suffix lengths must be >= 1, got {prefix_len}, {suffix_len}")
    out = []
    for i, row in enumerate(rows, 1):
        if "prefix_ids" in row and "suffix_ids" in row:
            prefix, suffix = list(row["prefix_ids"]), list(row["suffix_ids"])
        elif "prefix" in row and "suffix" in row:
            prefix = tokenizer(row["prefix"], add_special_tokens=False)["input_ids"]
            suffix = tokenizer(row["suffix"], add_special_tokens=False)["input_ids"]
        elif "text" in row:
            ids = tokenizer(row["text"], add_special_tokens=False)["input_ids"]
            if len(ids) < prefix_len + suffix_len:
                raise ValueError(
                    f"{where} row {i}: has {len(ids)} tokens, fewer than prefix {prefix_len} + "
                    f"suffix {suffix_len}; lower --prefix-len/--suffix-len or drop the row")
            prefix, suffix = ids[:prefix_len], ids[prefix_len:prefix_len + suffix_len]
        else:
            raise ValueError(f"{where} row {i}: needs 'text', or 'prefix' and 'suffix', or "
                             f"'prefix_ids' and 'suffix_ids'; has {sorted(row)}")
        if not prefix or not suffix:
            raise ValueError(f"{where} row {i}: empty prefix or suffix")
        out.append({"prefix": prefix, "suffix": suffix, "kind": str(row.get("kind", "all")),
                    "id": row.get("id", i - 1)})
    return out


def memorization_scores(distances: list[int], lengths: list[int]) -> dict:
    """strict / loose / avg_distance (fractions) from Levenshtein distances and suffix lengths."""
    if not distances:
        return {"n": 0, "strict": None, "loose": None, "avg_distance": None}
    norm = [d / n for d, n in zip(distances, lengths)]
    return {"n": len(norm),
            "strict": sum(d == 0 for d in distances) / len(norm),
            "loose": sum(1 - x >= LOOSE_THRESHOLD for x in norm) / len(norm),
            "avg_distance": sum(norm) / len(norm)}


def evaluate_memorization(model, tokenizer, rows: list[dict], prefix_len: int = 64,
                          suffix_len: int = 48, batch_size: int = 32, progress: bool = False,
                          where: str = "data") -> dict:
    examples = memorization_examples(rows, tokenizer, prefix_len, suffix_len, where)
    bar = _progress(len(examples), "memorization", progress)
    for idx in _by_length(examples, lambda e: (len(e["prefix"]), len(e["suffix"])), batch_size):
        prefix = torch.tensor([examples[i]["prefix"] for i in idx])
        generated = greedy_continue(model, prefix, len(examples[idx[0]]["suffix"])).tolist()
        for i, gen in zip(idx, generated):
            examples[i]["distance"] = Levenshtein.distance(gen, examples[i]["suffix"])
        bar.update(len(idx))
    bar.close()
    result = memorization_scores([e["distance"] for e in examples],
                                 [len(e["suffix"]) for e in examples])
    kinds = sorted({e["kind"] for e in examples})
    result["by_kind"] = {k: memorization_scores(
        [e["distance"] for e in examples if e["kind"] == k],
        [len(e["suffix"]) for e in examples if e["kind"] == k]) for k in kinds}
    result["prefix_len"], result["suffix_len"] = prefix_len, suffix_len
    result["examples"] = [{"id": e["id"], "kind": e["kind"], "distance": e["distance"],
                           "suffix_len": len(e["suffix"])} for e in examples]
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
    total_loss, total_tokens, batch_ppl = 0.0, 0, []
    bar = _progress(len(blocks), "perplexity", progress)
    device = model_device(model)
    for k in range(0, len(blocks), batch_size):
        batch = blocks[k:k + batch_size].to(device)
        logits = model(input_ids=batch).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1), reduction="sum")
        n = batch[:, 1:].numel()
        total_loss += loss.item()
        total_tokens += n
        batch_ppl.append(math.exp(loss.item() / n))
        bar.update(len(batch))
    bar.close()
    return {"perplexity": math.exp(total_loss / total_tokens),
            "perplexity_batch_mean": sum(batch_ppl) / len(batch_ppl),
            "mean_loss": total_loss / total_tokens, "n_tokens": total_tokens,
            "n_blocks": len(blocks), "block_len": block_len, "batch_size": batch_size}


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
            # what the model said, item by item, to see how it fails (not only how often)
            "items": [{"category": it["row"]["category"], "prompt": it["row"]["prompt"],
                       "answer": str(it["row"]["answer"]), "output": it["output"],
                       "correct": it["correct"]} for it in items]}


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


# --------------------------------------------------------------------------- the LM report

# The paper's own numbers (Merullo et al. 2025, Table 1 and Figure 3; see PAPER.md), shown beside
# ours for shape only: their model is OLMo-2 7B/1B on Dolma, ours a tiny OLMo-2 on a toy world.
# Fractions, not percent. "forget" ~ the paper's Dolma memorized set, "untargeted" ~ its
# historical quotes (never given to any method).
PAPER_TABLE1 = {
    "7B base": {"forget": (0.999, 1.000, 0.002), "untargeted": (0.999, 1.000, 0.001), "ppl": 19.04},
    "7B BSN": {"forget": (0.060, 0.110, 0.860), "untargeted": (0.600, 0.790, 0.180), "ppl": 23.59},
    "7B K-FAC": {"forget": (0.034, 0.088, 0.704), "untargeted": (0.161, 0.238, 0.625), "ppl": 22.84},
    "7B SVD": {"forget": (0.030, 0.068, 0.754), "untargeted": (0.175, 0.304, 0.560), "ppl": 22.49},
    "1B base": {"forget": (0.9846, 0.9938, 0.005), "untargeted": (0.985, 0.9895, 0.006),
                "ppl": 23.19},
    "1B K-FAC": {"forget": (0.028, 0.072, 0.761), "untargeted": (0.277, 0.399, 0.470), "ppl": 26.53},
}
PAPER_NDCG10 = {"7B base": 1.00, "7B BSN": 0.97, "7B K-FAC": 0.91, "7B SVD": 0.91}
# Figure 3: K-FAC-edited 7B as a fraction of base, per category (our category -> paper range)
PAPER_RETENTION = {"logic": (0.95, 1.06), "open_book": (0.93, 0.99),
                   "closed_book": (0.74, 0.86), "arithmetic": (0.66, 0.74),
                   "memorization": (0.03, 0.16)}
TASK_CATEGORIES = ("closed_book", "open_book", "arithmetic", "logic")
SPLITS = ("forget", "untargeted", "control")
KINDS = ("random", "natural")
EVAL_FILES = {"forget": "memorization_forget.json", "untargeted": "memorization_untargeted.json",
              "control": "memorization_control.json", "perplexity": "perplexity.json",
              "tasks": "tasks.json", "coherence": "coherence.json"}


def parse_entries(entries: list[str]) -> dict:
    """['base=DIR', 'NAME=DIR', ...] -> {name: Path}; 'base' is required, names are unique."""
    from pathlib import Path

    out = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--entry '{entry}' must look like NAME=DIR")
        if name in out:
            raise ValueError(f"--entry name '{name}' is given twice")
        if not Path(path).is_dir():
            raise ValueError(f"--entry {name}: {path} is not a directory of evaluation JSONs")
        out[name] = Path(path)
    if "base" not in out:
        raise ValueError("report-lm needs an entry named 'base' (the unedited model)")
    return out


def _split_summary(mem: dict) -> dict:
    pick = ("strict", "loose", "avg_distance")
    by_kind = mem.get("by_kind", {})
    return {**{k: mem[k] for k in pick},
            "by_kind": {kind: ({k: by_kind[kind][k] for k in pick} if kind in by_kind else None)
                        for kind in KINDS}}


def model_summary(directory) -> dict:
    """One (model, edit)'s evaluation JSONs -> the summary's per-model record."""
    from curvmem.store import read_json

    files = {key: directory / name for key, name in EVAL_FILES.items()}
    missing = [str(p) for key, p in files.items() if key != "coherence" and not p.is_file()]
    if missing:
        raise ValueError(f"{directory}: missing evaluation file(s) {missing}")
    record = {split: _split_summary(read_json(files[split])) for split in SPLITS}
    ppl = read_json(files["perplexity"])
    record["perplexity"] = ppl["perplexity_batch_mean"]
    record["perplexity_token_mean"] = ppl["perplexity"]
    tasks = read_json(files["tasks"])
    record["tasks"] = {c: tasks["accuracy"].get(c) for c in TASK_CATEGORIES}
    record["tasks_n"] = {c: tasks.get("n", {}).get(c) for c in TASK_CATEGORIES}
    # absent from task files without subcategories (and from evaluations of older curvmem)
    record["subtasks"] = dict(tasks.get("accuracy_by_subcategory", {}))
    record["subtasks_n"] = dict(tasks.get("n_by_subcategory", {}))
    record["ndcg10"] = read_json(files["coherence"])["ndcg10"] if files["coherence"].is_file() else None
    edit = ppl.get("edit")
    if edit:
        record.update({k: edit.get(k) for k in ("method", "spec", "seconds", "peak_rss_mb")})
    return record


def select_edit(models: dict, max_ppl_rise: float = 0.10) -> str | None:
    """The chosen K-FAC edit of a sweep, using ONLY the forget set and perplexity.

    Among edits with method 'kfac' whose perplexity is at most (1 + max_ppl_rise) x base: the
    lowest forget strict; ties go to the higher forget avg_distance, then the lower perplexity.
    The untargeted set is never looked at. None when no edit qualifies.
    """
    base_ppl = models["base"]["perplexity"]
    candidates = [(m["forget"]["strict"], -m["forget"]["avg_distance"], m["perplexity"], name)
                  for name, m in models.items()
                  if name != "base" and m.get("method") == "kfac"
                  and m["perplexity"] <= (1 + max_ppl_rise) * base_ppl]
    return min(candidates)[3] if candidates else None


def build_summary(entries: dict, max_ppl_rise: float = 0.10) -> dict:
    models = {name: model_summary(path) for name, path in entries.items()}
    for name, m in models.items():
        if name != "base" and not m.get("method"):
            raise ValueError(f"entry '{name}' has no edit meta in its perplexity.json; only "
                             "'base' may be unedited")
    return {"models": models, "selected": select_edit(models, max_ppl_rise)}


def _ratio(edited: float | None, base: float | None) -> float | None:
    """edited ÷ base; None when either is missing or the base is 0."""
    return edited / base if base and edited is not None else None


def retention(summary: dict, name: str) -> dict:
    """Edited / base per task category, and for memorization (untargeted strict)."""
    base, edited = summary["models"]["base"], summary["models"][name]
    out = {}
    for c in TASK_CATEGORIES:
        out[c] = _ratio(edited["tasks"].get(c), base["tasks"].get(c))
    b, e = base["untargeted"]["strict"], edited["untargeted"]["strict"]
    out["memorization"] = e / b if b else None
    return out


def _f(x, fmt="{:.3f}"):
    return "–" if x is None else fmt.format(x)


def _pct(x):
    return _f(None if x is None else 100 * x, "{:.1f}")


def _accuracy_cell(model: dict, category: str) -> str:
    """'0.310 ± 0.033 (200)': the binomial standard error says how far a ratio can be trusted."""
    acc, n = model["tasks"].get(category), (model.get("tasks_n") or {}).get(category)
    if acc is None or not n:
        return _f(acc)
    return f"{acc:.3f} ± {math.sqrt(acc * (1 - acc) / n):.3f} ({n})"


def _subtask_lines(models: dict) -> list[str]:
    """Accuracy by subcategory (e.g. logic/order, logic/boolean), base then edited ÷ base; none
    when the task file has no subcategories."""
    base = models["base"]
    subs = sorted(base.get("subtasks") or {})
    if not subs:
        return []
    lines = ["", "## Accuracy by subcategory (edited ÷ base)", "",
             "| model | " + " | ".join(subs) + " |", "|---|" + "---|" * len(subs)]
    n = base.get("subtasks_n") or {}
    lines.append("| base accuracy (n) | " + " | ".join(
        f"{_f(base['subtasks'][s])} ({n.get(s, '?')})" for s in subs) + " |")
    for name, m in models.items():
        if name == "base":
            continue
        edited = m.get("subtasks") or {}
        cells = [_pct(_ratio(edited.get(s), base["subtasks"][s])) for s in subs]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def report_text(summary: dict, max_ppl_rise: float = 0.10) -> str:
    """Markdown: Table 1 (ours, then the paper's), Figure-3 retention, the sweep, the choice."""
    models, selected = summary["models"], summary["selected"]
    base_ppl = models["base"]["perplexity"]
    lines = ["## Memorization and perplexity (shape of the paper's Table 1)", "",
             ("Strict/loose in %, Avg Lev = mean normalized distance (higher = less memorized). "
              "Ours: forget and untargeted canaries (both kinds); paper: Dolma memorized and "
              "historical quotes."), "",
             ("| source | model | forget strict | loose | Avg Lev | untargeted strict | loose | "
              "Avg Lev | control strict | PPL | nDCG@10 |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        f, u = m["forget"], m["untargeted"]
        lines.append(f"| ours | {name}{' (selected)' if name == selected else ''} | "
                     f"{_pct(f['strict'])} | {_pct(f['loose'])} | {_f(f['avg_distance'])} | "
                     f"{_pct(u['strict'])} | {_pct(u['loose'])} | {_f(u['avg_distance'])} | "
                     f"{_pct(m['control']['strict'])} | {_f(m['perplexity'], '{:.2f}')} | "
                     f"{_f(m['ndcg10'])} |")
    for name, p in PAPER_TABLE1.items():
        (fs, fl, fa), (us, ul, ua) = p["forget"], p["untargeted"]
        lines.append(f"| paper (OLMo-2) | {name} | {_pct(fs)} | {_pct(fl)} | {fa:.3f} | "
                     f"{_pct(us)} | {_pct(ul)} | {ua:.3f} | – | {p['ppl']:.2f} | "
                     f"{_f(PAPER_NDCG10.get(name), '{:.2f}')} |")

    lines += ["", "## Strict recitation by canary kind (%)", "",
              ("| model | forget random | forget natural | untargeted random | "
               "untargeted natural | control random | control natural |"),
              "|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        cells = [_pct((m[s]["by_kind"][k] or {}).get("strict")) for s in SPLITS for k in KINDS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    edits = [n for n in models if n != "base"]
    if edits:
        lines += ["", "## Retention, edited ÷ base (shape of the paper's Figure 3)", "",
                  "| model | " + " | ".join(list(TASK_CATEGORIES) + ["memorization"]) + " |",
                  "|---|" + "---|" * (len(TASK_CATEGORIES) + 1)]
        lines.append("| base accuracy ± s.e. (n) | " + " | ".join(
            _accuracy_cell(models["base"], c) for c in TASK_CATEGORIES) + " | – |")
        for name in edits:
            r = retention(summary, name)
            lines.append(f"| {name} | " + " | ".join(_pct(r[c]) for c in r) + " |")
        lines.append("| paper K-FAC 7B (range) | " + " | ".join(
            f"{100 * lo:.0f}–{100 * hi:.0f}" for lo, hi in
            (PAPER_RETENTION[c] for c in list(TASK_CATEGORIES) + ["memorization"])) + " |")

        lines += _subtask_lines(models)
        lines += ["", "## Sweep", "",
                  ("| edit | method | spec | forget strict R/N | untargeted strict R/N | "
                   "PPL rise % | seconds | peak RSS MB |"), "|---|---|---|---|---|---|---|---|"]
        for name in edits:
            m = models[name]
            spec = json.dumps(m.get("spec"), separators=(",", ":"))
            fr = "/".join(_pct((m["forget"]["by_kind"][k] or {}).get("strict")) for k in KINDS)
            ur = "/".join(_pct((m["untargeted"]["by_kind"][k] or {}).get("strict")) for k in KINDS)
            rise = 100 * (m["perplexity"] / base_ppl - 1)
            lines.append(f"| {name}{' **selected**' if name == selected else ''} | "
                         f"{m.get('method')} | `{spec}` | {fr} | {ur} | {rise:+.1f} | "
                         f"{_f(m.get('seconds'), '{:.1f}')} | {_f(m.get('peak_rss_mb'), '{:.0f}')} |")
    lines += ["", (f"Selection rule: among K-FAC edits whose perplexity rises at most "
                   f"{100 * max_ppl_rise:.0f} % over base, the lowest forget strict (ties: higher "
                   f"forget Avg Lev, then lower perplexity); the untargeted set is never used. "
                   f"Selected: {selected or 'none qualifies'}."), ""]
    return "\n".join(lines)
