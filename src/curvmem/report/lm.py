"""The LM report: evaluation JSONs of base and edits -> summary, Markdown table, retention.

`curvmem report-lm` reads one directory of evaluation files per entry (docs/lm.md), selects each
method's edit by the paper's rule (lowest forget recitation within a perplexity budget on the
selection's held-out text: validation data only) and, as a reported variant, by that rule with
validation-task retention added; sets them beside the paper's numbers (curvmem.report.paper).

Beside recitation the summary separates memorization from genre: for every model, teacher-forced
suffix loss and greedy distance on the memorized sets and on never-trained items of the same
kinds (control, control_quotes), the memorization gap (control minus memorized, before and after
an edit), genre competence (the control's suffix loss relative to base), and the verdict of the
rule that says whether an edit removes memorization (curvmem.report.claims.removes_memorization).
Per-item records (matched by id across base and edits) go into the summary for the claim rules'
bootstraps.
"""

from __future__ import annotations

import json
import math

from curvmem.io import read_cost, read_json
from curvmem.report.costs import EDIT_COSTS, markdown_table
from curvmem.report.paper import PAPER_NDCG10, PAPER_RETENTION, PAPER_TABLE1, TASK_CATEGORIES
from curvmem.report.selection import (
    SELECTION_READS,  # noqa: F401  (callers read it here)
    _ratio,
    retention,
    select_edits,
)

# memorized sets: forget (read by BSN and by the selection rule), forget_validation (the paper's
# held-out half, reported only), untargeted (the paper's quotes: read by nothing), untargeted_long
# (the quotes scored on a 48-token suffix), control and control_quotes (never trained)
SPLITS = ("forget", "forget_validation", "untargeted", "untargeted_long", "control",
          "control_quotes")
EVAL_FILES = {**{s: f"memorization_{s}.json" for s in SPLITS}, "perplexity": "perplexity.json",
              "perplexity_selection": "perplexity_selection.json", "tasks": "tasks.json",
              "tasks_validation": "tasks_validation.json", "coherence": "coherence.json"}
# tasks: a config may score skills with lm-evaluation-harness only (docs/lm.md)
OPTIONAL_FILES = ("forget_validation", "untargeted_long", "control", "control_quotes",
                  "perplexity_selection", "tasks", "tasks_validation", "coherence")


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


def wilson(successes: float, n: int, z: float = 1.96) -> list[float] | None:
    """The 95 % Wilson score interval [lo, hi] of a rate of `successes` in `n` (None for n = 0):
    0 of 52 gives [0, 0.069], not the [0, 0] a normal interval would."""
    if not n:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _split_summary(mem: dict) -> dict:
    pick = ("n", "strict", "loose", "avg_distance", "suffix_loss")
    out = {**{k: mem.get(k) for k in pick},
           "by_kind": {kind: {k: v.get(k) for k in pick}
                       for kind, v in sorted(mem.get("by_kind", {}).items())}}
    if out["n"] and out["strict"] is not None:
        out["wilson"] = wilson(round(out["strict"] * out["n"]), out["n"])
    return out


def _task_key(item: dict, seen: dict) -> str:
    """A task item's id, or (older files) its category, prompt, answer and occurrence."""
    if item.get("id") is not None:
        return str(item["id"])
    key = f"{item.get('category')}|{item.get('prompt')}|{item.get('answer')}"
    seen[key] = seen.get(key, 0) + 1
    return f"{key}|{seen[key]}"


def _tasks_summary(tasks: dict) -> dict:
    return {"tasks": {c: tasks["accuracy"].get(c) for c in TASK_CATEGORIES},
            "tasks_n": {c: tasks.get("n", {}).get(c) for c in TASK_CATEGORIES},
            # absent from task files without subcategories (and from older evaluations)
            "subtasks": dict(tasks.get("accuracy_by_subcategory", {})),
            "subtasks_n": dict(tasks.get("n_by_subcategory", {}))}


def model_summary(directory) -> dict:
    """One (model, edit)'s evaluation JSONs -> the summary's per-model record. The optional
    sets (forget_validation, the long quotes, control quotes, the selection's held-out text, the
    validation tasks) are None when the config does not evaluate them."""
    files = {key: directory / name for key, name in EVAL_FILES.items()}
    missing = [str(p) for key, p in files.items() if key not in OPTIONAL_FILES and not p.is_file()]
    if missing:
        raise ValueError(f"{directory}: missing evaluation file(s) {missing}")
    have = {key for key, p in files.items() if p.is_file()}
    raw = {split: read_json(files[split]) for split in SPLITS if split in have}
    record = {split: _split_summary(raw[split]) if split in raw else None for split in SPLITS}
    # per-item records, aligned across models by build_summary (then dropped from here)
    record["_examples"] = {split: mem["examples"] for split, mem in raw.items()
                           if mem.get("examples")}
    ppl = read_json(files["perplexity"])
    record["perplexity"] = ppl["perplexity_batch_mean"]
    record["perplexity_token_mean"] = ppl["perplexity"]
    record["perplexity_selection"] = (read_json(files["perplexity_selection"])
                                      ["perplexity_batch_mean"]
                                      if "perplexity_selection" in have else None)
    if ppl.get("block_losses") is not None:
        record["perplexity_blocks"] = [round(x, 6) for x in ppl["block_losses"]]
    record["_model"] = ppl.get("model")
    tasks = read_json(files["tasks"]) if "tasks" in have else {"accuracy": {}}
    record.update(_tasks_summary(tasks))
    seen = {}
    record["_task_items"] = [(_task_key(it, seen), it.get("category"), it.get("subcategory"),
                              bool(it.get("correct"))) for it in tasks.get("items") or []]
    record["validation"] = (_tasks_summary(read_json(files["tasks_validation"]))
                            if "tasks_validation" in have else None)
    record["ndcg10"] = read_json(files["coherence"])["ndcg10"] if "coherence" in have else None
    edit = ppl.get("edit")
    if edit:
        record.update({k: edit.get(k) for k in ("method", "spec")})
    return record


def edit_cost(directory) -> dict | None:
    """{"seconds", "peak_rss_mb"} of producing the edit a directory's evaluations score; None for
    the base model or an edit with no recorded cost. From the perplexity evaluation's cost file
    (its "edit": the edit's cost file when the evaluation ran), else the edit file's own cost
    file, else the fields an older curvmem wrote into the evaluation's "edit" record."""
    path = directory / EVAL_FILES["perplexity"]
    ppl = read_json(path)
    edit = ppl.get("edit")
    if not edit:
        return None
    measured = ((read_cost(path) or {}).get("edit")
                or (read_cost(ppl["edit_file"]) if ppl.get("edit_file") else None) or edit)
    if all(measured.get(k) is None for k in EDIT_COSTS):
        return None
    return {k: measured.get(k) for k in EDIT_COSTS}


def build_costs(entries: dict) -> dict:
    """The report's costs, for `<summary>.cost.json`: {"models": {edit: {"seconds",
    "peak_rss_mb"}}} (edits with a recorded cost only)."""
    costs = {name: edit_cost(path) for name, path in entries.items() if name != "base"}
    return {"models": {name: c for name, c in costs.items() if c is not None}}


def cost_text(summary: dict, costs: dict) -> str:
    """The sweep's costs as Markdown (the cost table beside the report's table)."""
    rows = [[name, str(m.get("method")), f"`{json.dumps(m.get('spec'), separators=(',', ':'))}`",
             _f((costs.get(name) or {}).get("seconds"), "{:.1f}"),
             _f((costs.get(name) or {}).get("peak_rss_mb"), "{:.0f}")]
            for name, m in summary["models"].items() if name != "base"]
    return markdown_table(
        "Cost of each edit", ["edit", "method", "spec", "seconds", "peak RSS MB"], rows,
        "Wall seconds and peak RSS of producing each edit (for K-FAC including the collection "
        "and eigendecomposition it builds on); measured, so they differ between runs.")


def parse_labels(labels: list[str] | None, paper_dolma: str = "forget_validation") -> dict:
    """['control=validation half', ...] -> column titles of the memorization sets, and which of
    our sets sits beside the paper's Table 1 Dolma numbers (its validation half): our
    forget_validation, or another set where a config holds the paper's released halves
    differently (the 7B config: docs/workflow.md)."""
    out = {split: split.replace("_", "-") for split in SPLITS}
    out["untargeted"] = "quotes (untargeted)"
    for item in labels or []:
        split, sep, text = item.partition("=")
        if not sep or split not in SPLITS or not text:
            raise ValueError(f"--label '{item}' must look like SPLIT=TEXT with SPLIT one of "
                             f"{list(SPLITS)}")
        out[split] = text
    if paper_dolma not in SPLITS:
        raise ValueError(f"--paper-dolma must be one of {list(SPLITS)}, got '{paper_dolma}'")
    return {"labels": out, "paper_dolma": paper_dolma}


# (memorized set, its never-trained control of the same kinds) whose gap the summary reports
GAP_PAIRS = (("forget", "control"), ("forget_validation", "control"),
             ("untargeted", "control_quotes"))
CONTROL_SPLITS = ("control", "control_quotes")
# the summary's item records: distances are integers, losses kept to 1e-5 nats
LOSS_DIGITS = 5


def _align_items(models: dict) -> dict:
    """Move each model's per-item records into one order per set (the base's), matched by id:
    summary["items"][split] = {"id", "kind", "suffix_len"}, models[name][split]["items"] =
    {"distance", "suffix_loss"}; tasks likewise ("task_items": {"correct"}). A set some model
    lacks records of gets none; an edit scored on other items than the base is refused."""
    items = {}
    examples = {name: m.pop("_examples") for name, m in models.items()}
    for split in SPLITS:
        if not all(split in ex for ex in examples.values()):
            continue
        base = examples["base"][split]
        ids = [e["id"] for e in base]
        if len(set(map(str, ids))) != len(ids):
            raise ValueError(f"base memorization_{split}.json: item ids repeat; the claim rules "
                             "match items by id")
        items[split] = {"id": ids, "kind": [e["kind"] for e in base],
                        "suffix_len": [e["suffix_len"] for e in base]}
        for name, ex in examples.items():
            by_id = {str(e["id"]): e for e in ex[split]}
            if set(by_id) != set(map(str, ids)):
                raise ValueError(f"entry '{name}': memorization_{split}.json scores other items "
                                 "than the base's; evaluate every model on the same file")
            ordered = [by_id[str(i)] for i in ids]
            models[name][split]["items"] = {
                "distance": [e["distance"] for e in ordered],
                "suffix_loss": [round(e["suffix_loss"], LOSS_DIGITS)
                                if e.get("suffix_loss") is not None else None for e in ordered]}
    tasks = {name: m.pop("_task_items") for name, m in models.items()}
    if all(tasks.values()):
        keys = [k for k, *_ in tasks["base"]]
        items["tasks"] = {"id": keys, "category": [c for _, c, _, _ in tasks["base"]],
                          "subcategory": [s for _, _, s, _ in tasks["base"]]}
        for name, rows in tasks.items():
            by_key = {k: ok for k, _, _, ok in rows}
            if set(by_key) != set(keys):
                raise ValueError(f"entry '{name}': tasks.json scores other items than the base's")
            models[name]["task_items"] = {"correct": [int(by_key[k]) for k in keys]}
    return items


def memorization_gaps(model: dict) -> dict:
    """{memorized set: control minus memorized suffix_loss and avg_distance} of one model
    (curvmem.evaluate.lm.memorization_gap), for the sets and controls it has."""
    from curvmem.evaluate.lm import memorization_gap  # torch-free callers never reach here

    return {mem: memorization_gap(model[mem], model[ctl]) for mem, ctl in GAP_PAIRS
            if model.get(mem) and model.get(ctl)}


def genre_competence(model: dict, base: dict) -> dict:
    """{control set: edit minus base suffix_loss (nats/token: the log of the suffix perplexity's
    ratio) and avg_distance}: how much of the memorized kinds' genre an edit keeps."""
    out = {}
    for ctl in CONTROL_SPLITS:
        m, b = model.get(ctl), base.get(ctl)
        if m and b:
            out[ctl] = {k: (m[k] - b[k] if m.get(k) is not None and b.get(k) is not None
                            else None) for k in ("suffix_loss", "avg_distance")}
    return out


def _model_layers(model_path) -> int | None:
    """The number of transformer layers of the base model, from its config.json, if readable."""
    from pathlib import Path

    cfg = Path(str(model_path)) / "config.json" if model_path else None
    if cfg is None or not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return None
    n = data.get("num_hidden_layers")
    return n if isinstance(n, int) else None


def build_summary(entries: dict, max_ppl_rise: float = 0.10, task_weight: float = 0.5,
                  columns: dict | None = None) -> dict:
    """The summary of report-lm: every model's record, the paper's selection (primary) and the
    task-weighted variant (`task_weight`), the item records, and the claim rules' version."""
    from curvmem.report import claims  # it reads this module's selection rule

    models = {name: model_summary(path) for name, path in entries.items()}
    for name, m in models.items():
        if name != "base" and not m.get("method"):
            raise ValueError(f"entry '{name}' has no edit meta in its perplexity.json; only "
                             "'base' may be unedited")
    model_path = models["base"].get("_model")
    for m in models.values():
        m.pop("_model", None)
    items = _align_items(models)
    for m in models.values():
        m["gap"] = memorization_gaps(m)
        m["genre"] = genre_competence(m, models["base"])
    selection = select_edits(models, max_ppl_rise, 0.0)
    summary = {"models": models, "selection": selection,
               "selected": selection.get("kfac", {}).get("selected"),
               "selection_variants": {"task_weighted": select_edits(models, max_ppl_rise,
                                                                    task_weight)},
               "columns": columns or parse_labels(None),
               "claims_version": claims.CLAIMS_VERSION,
               "model_layers": _model_layers(model_path), "items": items}
    for name, m in models.items():
        if name != "base":
            m["removes_memorization"] = {
                s: claims.removes_memorization(summary, name, s) for s in claims.MEMORIZED_SETS}
    return summary


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


def _mem_cells(split: dict | None) -> str:
    if split is None:
        return "– | – | –"
    return f"{_pct(split['strict'])} | {_pct(split['loose'])} | {_f(split['avg_distance'])}"


def kinds_of(models: dict, split: str) -> list[str]:
    """The item kinds a memorized set has (e.g. random, menu, table, licence; quote)."""
    base = models["base"].get(split) or {}
    return sorted(base.get("by_kind") or {})


def report_text(summary: dict, max_ppl_rise: float = 0.10) -> str:
    """Markdown: Table 1 (ours, then the paper's), Figure-3 retention, the sweep, the choice."""
    models = summary["models"]
    chosen = {s["selected"]: method for method, s in (summary.get("selection") or {}).items()
              if s["selected"]}
    base_ppl = models["base"]["perplexity"]
    columns = summary.get("columns") or parse_labels(None)
    names, dolma = columns["labels"], columns["paper_dolma"]
    lines = ["## Memorization and perplexity (shape of the paper's Table 1)", "",
             ("Strict/loose in %, Avg Lev = mean normalized distance (higher = less memorized). "
              f"Beside the paper's Dolma validation half: our {names[dolma]} (read by no method "
              f"and no selection rule); beside its historical quotes: our {names['untargeted']}. "
              f"Then {names['forget']} (what BSN trains on and the selection reads) and the "
              "never-trained controls."), "",
             (f"| source | model | {names[dolma]} strict | loose | Avg Lev | "
              f"{names['untargeted']} strict | loose | Avg Lev | PPL | nDCG@10 | "
              f"{names['forget']} strict | {names['control']} strict | "
              f"{names['control_quotes']} strict |"),
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in models.items():
        tag = f" (selected {chosen[name]})" if name in chosen else ""
        cq, control = m.get("control_quotes"), m.get("control")
        lines.append(f"| ours | {name}{tag} | {_mem_cells(m.get(dolma))} | "
                     f"{_mem_cells(m['untargeted'])} | {_f(m['perplexity'], '{:.2f}')} | "
                     f"{_f(m['ndcg10'])} | {_pct(m['forget']['strict'])} | "
                     f"{_pct(control['strict'] if control else None)} | "
                     f"{_pct(cq['strict'] if cq else None)} |")
    for name, p in PAPER_TABLE1.items():
        (fs, fl, fa), (us, ul, ua) = p["forget"], p["untargeted"]
        lines.append(f"| paper (OLMo-2) | {name} | {_pct(fs)} | {_pct(fl)} | {fa:.3f} | "
                     f"{_pct(us)} | {_pct(ul)} | {ua:.3f} | {p['ppl']:.2f} | "
                     f"{_f(PAPER_NDCG10.get(name), '{:.2f}')} | – | – | – |")

    columns = [(s, k) for s in SPLITS for k in kinds_of(models, s)]
    lines += ["", "## Strict recitation by set and kind (%)", "",
              "| model | " + " | ".join(f"{s} {k}" for s, k in columns) + " |",
              "|---|" + "---|" * len(columns)]
    for name, m in models.items():
        cells = [_pct(((m.get(s) or {}).get("by_kind", {}).get(k) or {}).get("strict"))
                 for s, k in columns]
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
                  ("| edit | method | spec | forget strict | forget-validation strict | quotes "
                   "strict | selection PPL rise % | mean validation retention % | PPL rise % |"),
                  "|---|---|---|---|---|---|---|---|---|"]
        base_sel = models["base"].get("perplexity_selection")
        variant = {s["selected"] for s in ((summary.get("selection_variants") or {})
                                           .get("task_weighted") or {}).values()}
        for name in edits:
            m = models[name]
            spec = json.dumps(m.get("spec"), separators=(",", ":"))
            rise = 100 * (m["perplexity"] / base_ppl - 1)
            sel_rise = (100 * (m["perplexity_selection"] / base_sel - 1)
                        if base_sel and m.get("perplexity_selection") is not None else None)
            tags = (" **selected**" if name in chosen else "") + (
                " (task-weighted pick)" if name in variant else "")
            lines.append(f"| {name}{tags} | "
                         f"{m.get('method')} | `{spec}` | {_pct(m['forget']['strict'])} | "
                         f"{_pct((m.get('forget_validation') or {}).get('strict'))} | "
                         f"{_pct(m['untargeted']['strict'])} | {_f(sel_rise, '{:+.1f}')} | "
                         f"{_pct(validation_retention(summary, name))} | {rise:+.1f} |")
    lines += genre_lines(summary)
    lines += ["", selection_text(summary), ""]
    return "\n".join(lines)


def _wilson_cell(split: dict | None) -> str:
    """'3.8 [1.1–12.9]': strict recitation in % and its 95 % Wilson interval."""
    if not split or split.get("strict") is None:
        return "–"
    w = split.get("wilson")
    return _pct(split["strict"]) + (f" [{100 * w[0]:.1f}–{100 * w[1]:.1f}]" if w else "")


def _verdict_cell(v: dict | None) -> str:
    if not v:
        return "–"
    return {True: "yes", False: "no", None: "not tested"}[v["holds"]]


def genre_lines(summary: dict) -> list[str]:
    """Memorization against genre: recitation, suffix loss and the gap on the memorized sets and
    their never-trained same-kind controls, genre competence, and the removal rule's verdict."""
    models = summary["models"]
    if not any(m.get("genre") for m in models.values()):
        return []
    from curvmem.report.claims import GENRE_MARGIN, RECITATION_SHARE

    lines = ["", "## Memorization against genre (never-trained controls of the same kinds)", "",
             ("Strict recitation in % [95 % Wilson interval]; loss = teacher-forced suffix "
              "cross-entropy in nats/token; gap = control − memorized loss (positive: the "
              "memorized items are predicted better than their genre explains); Δ control = "
              "the control's loss minus the base's (genre competence lost); removes = the rule "
              f"(recitation < {RECITATION_SHARE:g} x base and Δ control < log 1.10 = "
              f"{GENRE_MARGIN:.3f}, both by a paired item bootstrap: curvmem.report.claims)."),
             "",
             ("| model | forget-validation strict | loss | gap | quotes strict | loss | gap | "
              "control loss | Δ control | control Avg Lev | control-quotes loss | "
              "Δ control-quotes | removes: forget-validation | quotes |"),
             "|---|" + "---|" * 13]
    for name, m in models.items():
        gap, genre = m.get("gap") or {}, m.get("genre") or {}
        fv, q = m.get("forget_validation") or {}, m.get("untargeted") or {}
        c, cq = m.get("control") or {}, m.get("control_quotes") or {}
        rm = m.get("removes_memorization") or {}
        lines.append(
            f"| {name} | {_wilson_cell(fv)} | {_f(fv.get('suffix_loss'))} | "
            f"{_f((gap.get('forget_validation') or {}).get('suffix_loss'), '{:+.3f}')} | "
            f"{_wilson_cell(q)} | {_f(q.get('suffix_loss'))} | "
            f"{_f((gap.get('untargeted') or {}).get('suffix_loss'), '{:+.3f}')} | "
            f"{_f(c.get('suffix_loss'))} | "
            f"{_f((genre.get('control') or {}).get('suffix_loss'), '{:+.3f}')} | "
            f"{_f(c.get('avg_distance'))} | {_f(cq.get('suffix_loss'))} | "
            f"{_f((genre.get('control_quotes') or {}).get('suffix_loss'), '{:+.3f}')} | "
            f"{_verdict_cell(rm.get('forget_validation')) if name != 'base' else '–'} | "
            f"{_verdict_cell(rm.get('quotes')) if name != 'base' else '–'} |")
    return lines


def validation_retention(summary: dict, name: str) -> float | None:
    """Mean over task categories of validation accuracy edited ÷ base (None without them)."""
    base, m = summary["models"]["base"], summary["models"][name]
    if base.get("validation") is None or m.get("validation") is None:
        return None
    ratios = [_ratio(m["validation"]["tasks"].get(c), base["validation"]["tasks"].get(c))
              for c in TASK_CATEGORIES]
    ratios = [r for r in ratios if r is not None]
    return sum(ratios) / len(ratios) if ratios else None


def _rule_text(selection: dict) -> str:
    any_rule = next(iter(selection.values()))
    weight = any_rule.get("task_weight", 0.5)
    score = ("the lowest forget strict" if not weight else
             f"the lowest forget strict + {weight} x (1 - mean validation-task retention)")
    picks = "; ".join(f"{method}: {s['selected'] or 'none qualifies'} (of {s['n']})"
                      for method, s in selection.items())
    return (f"among its edits whose selection perplexity rises at most "
            f"{100 * any_rule['max_ppl_rise']:.0f} % over base, {score}; ties: lower selection "
            f"perplexity. It reads {', '.join(any_rule['reads'])} only. Selected: {picks}.")


def selection_text(summary: dict) -> str:
    selection = summary.get("selection") or {}
    if not selection:
        return "Selection: no K-FAC, SVD or BSN edit in this run."
    text = f"Selection rule, the same for every method: {_rule_text(selection)}"
    variant = (summary.get("selection_variants") or {}).get("task_weighted")
    if variant:
        text += f" Variant (reported, not used by the claims): {_rule_text(variant)}"
    return text
