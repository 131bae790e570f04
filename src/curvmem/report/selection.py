"""The selection rule (validation data only) and what it and the claims read of a summary:
one module below both `report.lm` (which builds summaries) and `report.claims` (which judges
them), so neither imports the other's reader."""

from __future__ import annotations

from curvmem.report.paper import TASK_CATEGORIES

SELECTION_READS = ("memorization_forget", "perplexity_selection", "tasks_validation")
SELECTED_METHODS = ("kfac", "svd", "bsn")  # the controls (kfac-bottom, ...) are never selected


def selection_reads(models: dict, task_weight: float = 0.5) -> list[str]:
    """The evaluations the selection rule reads for these models (SELECTION_READS, less those the
    config does not have: then the reported held-out perplexity stands in for the budget). The
    validation tasks only where the rule weighs them (task_weight > 0)."""
    base = models["base"]
    reads = ["memorization_forget"]
    reads.append("perplexity_selection" if base.get("perplexity_selection") is not None
                 else "perplexity")
    if base.get("validation") is not None and task_weight:
        reads.append("tasks_validation")
    return reads


def selection_score(models: dict, name: str, task_weight: float) -> float:
    """forget strict + task_weight x (1 - mean validation retention over task categories)."""
    m, base = models[name], models["base"]
    score = m["forget"]["strict"]
    if base.get("validation") is not None and task_weight:
        ratios = [_ratio(m["validation"]["tasks"].get(c), base["validation"]["tasks"].get(c))
                  for c in TASK_CATEGORIES]
        ratios = [r for r in ratios if r is not None]
        if ratios:
            score += task_weight * (1 - sum(ratios) / len(ratios))
    return score


def select_edits(models: dict, max_ppl_rise: float = 0.10, task_weight: float = 0.5) -> dict:
    """One rule for every method, on validation data only (decided before any result was seen).

    Among a method's edits whose selection perplexity (held-out text kept apart from the reported
    one) is at most (1 + max_ppl_rise) x base: the lowest forget strict + task_weight x (1 - mean
    validation-task retention); ties go to the lower selection perplexity. task_weight 0 is the
    paper's rule (forget recitation within the perplexity budget: the summary's primary
    selection). The forget-validation, untargeted, control and test sets are never read.
    {method: {"selected", "reads", "n", "max_ppl_rise", "task_weight"}}.
    """
    reads = selection_reads(models, task_weight)
    ppl_key = "perplexity_selection" if "perplexity_selection" in reads else "perplexity"
    budget = (1 + max_ppl_rise) * models["base"][ppl_key]
    out = {}
    for method in SELECTED_METHODS:
        names = [n for n, m in models.items() if n != "base" and m.get("method") == method]
        if not names:
            continue
        ok = [(selection_score(models, n, task_weight), models[n][ppl_key], n)
              for n in names if models[n][ppl_key] <= budget]
        out[method] = {"selected": min(ok)[2] if ok else None, "reads": reads, "n": len(names),
                       "max_ppl_rise": max_ppl_rise, "task_weight": task_weight}
    return out


def select_edit(models: dict, max_ppl_rise: float = 0.10, task_weight: float = 0.5) -> str | None:
    """The selected K-FAC edit (select_edits' rule), or None."""
    return select_edits(models, max_ppl_rise, task_weight).get("kfac", {}).get("selected")


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


def is_control(method: str | None) -> bool:
    """kfac-KEEP and kfac-FACTORS edits: the controls (curvmem.presets.KEEP_MODES, variants)."""
    return bool(method) and method.startswith("kfac-")


def selected_names(summary: dict) -> dict:
    """{edit name: method} of the selection rule's picks (older summaries: the K-FAC pick)."""
    selection = summary.get("selection")
    if selection is None:
        return {summary["selected"]: "kfac"} if summary.get("selected") else {}
    return {s["selected"]: method for method, s in selection.items() if s["selected"]}
