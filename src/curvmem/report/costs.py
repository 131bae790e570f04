"""Costs in reports: measured seconds and memory, kept apart from the results.

A cost differs between any two runs of the same command, so no result file holds one (see
curvmem.io, "cost files"): a report writes its summary's costs to `<summary>.cost.json` and its
tables' cost columns to a cost table beside the table (`lm_table.md` -> `lm_costs.md`). Readers
take the costs from those files and, for summaries an older curvmem wrote (the committed
snapshots under docs/results/), from the fields the summary itself then carried.
"""

from __future__ import annotations

from pathlib import Path

from curvmem.io import read_cost

COST_TABLE_SUFFIX = "_costs.md"
EDIT_COSTS = ("seconds", "peak_rss_mb")  # what the reports show of an edit's cost


def cost_table_path(table) -> Path:
    """The cost table beside a Markdown table: lm_table.md -> lm_costs.md, readme_tables.md ->
    readme_costs.md, compare.md -> compare_costs.md."""
    table = Path(table)
    stem = table.stem.removesuffix("_tables").removesuffix("_table")
    return table.with_name(stem + COST_TABLE_SUFFIX)


def is_cost_file(path) -> bool:
    """A cost file or a cost table: measured, so never compared as a result."""
    name = Path(path).name
    return name.endswith(".cost.json") or name.endswith(COST_TABLE_SUFFIX)


def model_costs(summary: dict, summary_path=None) -> dict:
    """{model: {"seconds", "peak_rss_mb"}} of an LM summary's edits: from the summary's cost
    file (`report-lm` writes it) or, for a summary written with its costs inside, from each
    model's own fields. A model with no recorded cost is absent."""
    side = read_cost(summary_path) if summary_path is not None else None
    if side is not None and isinstance(side.get("models"), dict):
        return {name: {k: c.get(k) for k in EDIT_COSTS}
                for name, c in side["models"].items() if isinstance(c, dict)}
    out = {}
    for name, m in (summary.get("models") or {}).items():
        if isinstance(m, dict) and any(m.get(k) is not None for k in EDIT_COSTS):
            out[name] = {k: m.get(k) for k in EDIT_COSTS}
    return out


def markdown_table(title: str, header: list[str], rows: list[list[str]], note: str = "") -> str:
    """A small Markdown cost table."""
    lines = [f"## {title}", ""]
    if note:
        lines += [note, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
