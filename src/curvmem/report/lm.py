"""The LM report: evaluation JSONs of base and edits -> summary, Markdown table, retention.

`curvmem report-lm` reads one directory of evaluation files per entry (docs/lm.md), selects the
edit to show (largest forget-set reduction within a perplexity budget) and sets it beside the
paper's numbers (curvmem.report.paper).
"""

from __future__ import annotations

import json
import math

from curvmem.io import read_json
from curvmem.report.paper import PAPER_NDCG10, PAPER_RETENTION, PAPER_TABLE1, TASK_CATEGORIES

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
    files = {key: directory / name for key, name in EVAL_FILES.items()}
    optional = ("coherence", "tasks")  # tasks: a config may score skills with the harness only
    missing = [str(p) for key, p in files.items() if key not in optional and not p.is_file()]
    if missing:
        raise ValueError(f"{directory}: missing evaluation file(s) {missing}")
    record = {split: _split_summary(read_json(files[split])) for split in SPLITS}
    ppl = read_json(files["perplexity"])
    record["perplexity"] = ppl["perplexity_batch_mean"]
    record["perplexity_token_mean"] = ppl["perplexity"]
    tasks = read_json(files["tasks"]) if files["tasks"].is_file() else {"accuracy": {}}
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


def parse_labels(labels: list[str] | None, paper_dolma: str = "forget") -> dict:
    """['control=validation half', ...] -> column titles of the three memorization sets, and
    under which of our columns the paper's Table 1 Dolma numbers belong (its validation half is
    our control when the forget set is the other released half)."""
    out = {split: split for split in SPLITS}
    for item in labels or []:
        split, sep, text = item.partition("=")
        if not sep or split not in SPLITS or not text:
            raise ValueError(f"--label '{item}' must look like SPLIT=TEXT with SPLIT one of "
                             f"{list(SPLITS)}")
        out[split] = text
    if paper_dolma not in ("forget", "control"):
        raise ValueError(f"--paper-dolma must be forget or control, got '{paper_dolma}'")
    return {"labels": out, "paper_dolma": paper_dolma}


def build_summary(entries: dict, max_ppl_rise: float = 0.10, columns: dict | None = None) -> dict:
    models = {name: model_summary(path) for name, path in entries.items()}
    for name, m in models.items():
        if name != "base" and not m.get("method"):
            raise ValueError(f"entry '{name}' has no edit meta in its perplexity.json; only "
                             "'base' may be unedited")
    return {"models": models, "selected": select_edit(models, max_ppl_rise),
            "columns": columns or parse_labels(None)}


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
    columns = summary.get("columns") or parse_labels(None)
    names, dolma = columns["labels"], columns["paper_dolma"]
    base_ppl = models["base"]["perplexity"]
    where = ("Ours: forget and untargeted canaries (both kinds); paper: Dolma memorized and "
             "historical quotes." if names == parse_labels(None)["labels"] else
             f"Ours: forget = {names['forget']}, untargeted = {names['untargeted']}, control = "
             f"{names['control']}; the paper's Dolma numbers (its validation half) are under "
             f"{names[dolma]}, its quotes under {names['untargeted']}.")
    lines = ["## Memorization and perplexity (shape of the paper's Table 1)", "",
             ("Strict/loose in %, Avg Lev = mean normalized distance (higher = less memorized). "
              + where), "",
             (f"| source | model | {names['forget']} strict | loose | Avg Lev | "
              f"{names['untargeted']} strict | loose | Avg Lev | {names['control']} strict | PPL "
              "| nDCG@10 |"),
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
        forget_cells, control_cell = f"{_pct(fs)} | {_pct(fl)} | {fa:.3f}", "–"
        if dolma == "control":  # our control column holds strict recitation only
            forget_cells, control_cell = "– | – | –", _pct(fs)
        lines.append(f"| paper (OLMo-2) | {name} | {forget_cells} | "
                     f"{_pct(us)} | {_pct(ul)} | {ua:.3f} | {control_cell} | {p['ppl']:.2f} | "
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
