"""The README's results, generated: the summaries of a run -> the Markdown its results section shows.

Nothing here chooses what looks good. The rows are fixed by rule: the base model, the edit the
selection rule picks for each method (validation data only: curvmem.report.lm.select_edits), the
same rule's pick within each K-FAC layer set, every control; then the paper's rows. Counts of the claims ("k of n
edits") are computed here too, so the README's prose can cite them. `curvmem report-readme`
writes this; docs/results/ keeps a committed snapshot and tests/test_readme.py checks that every
number of the README's results section is in it.
"""

from __future__ import annotations

from curvmem.report.lm import _accuracy_cell, _f, _pct
from curvmem.report.paper import PAPER_NDCG10, PAPER_RETENTION, PAPER_TABLE1, TASK_CATEGORIES
from curvmem.report.selection import is_control, retention, select_edit, selected_names
from curvmem.report.vit import table_markdown as vit_table

# the paper's Fig. 2 (7B, layer 22) and Table 6 (original -> perturbed mean exact-match length)
PAPER_ACTIVATION = {"top 10 %": -0.26, "bottom 50 %": +0.231}
PAPER_STRESS = {"BSN": ((4.6, 10.45), (9.79, 14.36)), "K-FAC": ((6.64, 8.6), (13.27, 9.34)),
                "SVD": ((6.33, 8.93), (12.78, 9.19))}


def table_rows(summary: dict) -> list[str]:
    """The models shown, by rule (see the module docstring), in a fixed order."""
    models = summary["models"]
    rows = ["base"] + list(selected_names(summary))
    by_layers = {}
    for name, m in models.items():
        if m.get("method") == "kfac":
            spec = m.get("spec") or {}  # {layer: {module: rho}}, layers as JSON strings
            layers = tuple(sorted(int(k) for k in spec if str(k).isdecimal()))
            by_layers.setdefault(layers, []).append(name)
    rule = next(iter((summary.get("selection") or {}).values()), {})
    for layers in sorted(by_layers, key=lambda t: (len(t), t)):
        pick = select_edit({"base": models["base"], **{n: models[n] for n in by_layers[layers]}},
                           rule.get("max_ppl_rise", 0.10), rule.get("task_weight", 0.5))
        if pick and pick not in rows:
            rows.append(pick)
    rows += [n for n, m in models.items() if is_control(m.get("method"))]
    return rows


def claim_counts(summary: dict) -> dict:
    """How many K-FAC edits erase every quote (untargeted) and every forget-validation item, and
    how many spare open-book and logic more than closed-book and arithmetic (the paper's split)."""
    models = summary["models"]
    kfac = [n for n, m in models.items() if m.get("method") == "kfac"]
    erased = [n for n in kfac if models[n]["untargeted"]["strict"] == 0]
    erased_val = [n for n in kfac if (models[n].get("forget_validation") or {}).get("strict") == 0]
    split = []
    for n in kfac:
        r = retention(summary, n)
        spared, hurt = (r["open_book"], r["logic"]), (r["closed_book"], r["arithmetic"])
        if None not in spared + hurt and min(spared) > max(hurt):
            split.append(n)
    return {"kfac_edits": len(kfac), "erase_untargeted": len(erased),
            "erase_forget_validation": len(erased_val), "split_of_skills": len(split)}


def _ppl_cell(m: dict, base_ppl: float) -> str:
    rise = 100 * (m["perplexity"] / base_ppl - 1)
    return f"{m['perplexity']:.2f}" + ("" if rise == 0 else f" ({rise:+.1f} %)")


def _mem(split: dict | None) -> str:
    if split is None:
        return "–"
    return " / ".join((_pct(split["strict"]), _pct(split["loose"]), _f(split["avg_distance"])))


def lm_tables(summary: dict) -> list[str]:
    models = summary["models"]
    chosen = selected_names(summary)
    base_ppl = models["base"]["perplexity"]
    rows = table_rows(summary)
    out = ["| model | forget-validation: strict / loose / Avg Lev | quotes: strict / loose / "
           "Avg Lev | forget strict | control strict | PPL | nDCG@10 |",
           "|---|---|---|---|---|---|---|"]
    for name in rows:
        m = models[name]
        shown = f"**{name} (selected {chosen[name]})**" if name in chosen else name
        out.append(f"| {shown} | {_mem(m.get('forget_validation'))} | {_mem(m['untargeted'])} | "
                   f"{_pct(m['forget']['strict'])} | {_pct(m['control']['strict'])} | "
                   f"{_ppl_cell(m, base_ppl)} | {_f(m['ndcg10'])} |")
    for name, p in PAPER_TABLE1.items():
        if not name.startswith("7B"):
            continue
        cells = [" / ".join((_pct(v[0]), _pct(v[1]), f"{v[2]:.3f}"))
                 for v in (p["forget"], p["untargeted"])]
        out.append(f"| *paper {name}* | {cells[0]} | {cells[1]} | – | – | {p['ppl']:.2f} | "
                   f"{_f(PAPER_NDCG10.get(name), '{:.2f}')} |")
    subs = sorted(models["base"].get("subtasks") or {})
    cats = list(TASK_CATEGORIES)
    out += ["", "Retention by skill, edited ÷ base in % (the shape of the paper's Figure 3; "
            "memorization = quotes strict):", "",
            "| model | " + " | ".join(cats + [s.replace('/', ': ') for s in subs]
                                    + ["memorization"]) + " |",
            "|---|" + "---|" * (len(cats) + len(subs) + 1)]
    base = models["base"]
    out.append("| base accuracy ± s.e. (n) | " + " | ".join(
        [_accuracy_cell(base, c) for c in cats]
        + [f"{_f(base['subtasks'][s])} ({(base.get('subtasks_n') or {}).get(s, '?')})"
           for s in subs]) + " | – |")
    for name in rows[1:]:
        r, m = retention(summary, name), models[name]
        sub = [_pct(m["subtasks"][s] / base["subtasks"][s])
               if base["subtasks"].get(s) and m.get("subtasks", {}).get(s) is not None else "–"
               for s in subs]
        shown = f"**{name}**" if name in chosen else name
        out.append(f"| {shown} | " + " | ".join([_pct(r[c]) for c in cats] + sub
                                               + [_pct(r["memorization"])]) + " |")
    out.append("| *paper 7B K-FAC* | " + " | ".join(
        [f"{100 * PAPER_RETENTION[c][0]:.0f}–{100 * PAPER_RETENTION[c][1]:.0f}" for c in cats]
        + [""] * len(subs) + ["3–16"]) + " |")
    counts = claim_counts(summary)
    out += ["", f"Of the {counts['kfac_edits']} K-FAC edits of the sweep, "
            f"{counts['erase_forget_validation']} erase every forget-validation document, "
            f"{counts['erase_untargeted']} erase every quote, and "
            f"{counts['split_of_skills']} keep more of open-book and of logic than of closed-book "
            f"and of arithmetic (the paper's split of skills)."]
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def analysis_tables(analyses: dict) -> list[str]:
    """Headline numbers of each analysis present, beside the paper's where it gives one."""
    out = []
    ar = analyses.get("activation_ratio")
    if ar:
        labels = ar["band_labels"]
        out += ["", "Activation ratio, memorized ÷ clean − 1 in % (mean over the analysed "
                f"modules: layers {ar['params']['layers']}; the paper's Fig. 2):", "",
                "| bands | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
        for family, what in (("kfac_pairs", "K-FAC, by share of pairs"),
                             ("kfac_mass", "K-FAC, by share of mass"),
                             ("svd", "SVD, by share of singular values")):
            cells = [_mean([m["ratio"]["all"][family][b] for m in ar["modules"]])
                     for b in range(len(labels))]
            out.append(f"| {what} | " + " | ".join(
                "–" if c is None else f"{100 * (c - 1):+.1f}" for c in cells) + " |")
        same = [(m.get("same_kind") or {}).get("documents") for m in ar["modules"]]
        if all(same):  # the primary contrast: never-trained documents of the same kinds
            for family, what in (("kfac_pairs", "K-FAC pairs, ÷ same-kind controls"),
                                 ("svd", "SVD, ÷ same-kind controls")):
                cells = [_mean([s[family][b] for s in same]) for b in range(len(labels))]
                out.append(f"| {what} | " + " | ".join(
                    "–" if c is None else f"{100 * (c - 1):+.1f}" for c in cells) + " |")
        out.append("| *paper 7B K-FAC* | " + " | ".join(
            f"{100 * PAPER_ACTIVATION[b]:+.1f}" if b in PAPER_ACTIVATION else ""
            for b in labels) + " |")
    st = analyses.get("stress")
    if st:
        params = st["params"]
        n_items = (params.get("n_items") or sum((params.get("n_by_kind") or {}).values())
                   or st["summary"]["base"].get("n"))
        out += ["", f"Stress test (t = {params['t']}, {n_items} items): mean ± std exact-match "
                "length in tokens, original → perturbed (the paper's Table 6):", "",
                "| model | original | perturbed |", "|---|---|---|"]
        for name, s in st["summary"].items():
            out.append(f"| {name} | {s['original']['mean']:.2f} ± {s['original']['std']:.2f} | "
                       f"{s['perturbed']['mean']:.2f} ± {s['perturbed']['std']:.2f} |")
        for name, ((om, osd), (pm, psd)) in PAPER_STRESS.items():
            out.append(f"| *paper {name}* | {om} ± {osd} | {pm} ± {psd} |")
    pe = analyses.get("per_example")
    if pe:
        out += ["", "Per-example curvature: median κ = Σ λμ·P² / Σ P² along each sequence's own "
                "gradient, and the median share of its squared gradient in the bottom band:", "",
                "| module | κ memorized | κ clean | bottom-band share memorized | clean |",
                "|---|---|---|---|---|"]
        for m in pe["modules"]:
            out.append(f"| L{m['layer']} {m['module']} | {m['memorized']['kappa_median']:.3g} | "
                       f"{m['clean']['kappa_median']:.3g} | "
                       f"{_pct(m['memorized']['band_share_median'][-1])} | "
                       f"{_pct(m['clean']['band_share_median'][-1])} |")
    sp = analyses.get("spectra")
    if sp:
        out += ["", "Spectra: effective rank (exp of the entropy of the normalized eigenvalues):",
                "", "| module | A (dim) | G (dim) |", "|---|---|---|"]
        for m in sp["modules"]:
            out.append(f"| L{m['layer']} {m['module']} | {m['effective_rank']['A']:.1f} "
                       f"({m['dims']['A']}) | {m['effective_rank']['G']:.1f} ({m['dims']['G']}) |")
    sb = analyses.get("stability")
    if sb:
        out += ["", f"Basis stability at ρ {sb['params']['rho']}: overlap of the kept pair sets "
                "(projector cosine, basis-free) between factor sets:", "",
                "| compared | positions each | kept-set overlap | A top-k overlap | "
                "G top-k overlap |",
                "|---|---|---|---|---|"]
        names = {"data": "disjoint slices", "seed": "label-sampling seeds", "both": "both"}
        for c in sb["comparisons"]:
            if c["n_tokens"][0] != c["n_tokens"][1] or c["kind"] == "same":
                continue  # equal sizes only: how the estimate varies at a given token count
            out.append(f"| {names[c['kind']]} | {c['n_tokens'][0]} | "
                       f"{c['mean']['kept_projector']:.3f} | {c['mean']['A_overlap']:.3f} | "
                       f"{c['mean']['G_overlap']:.3f} |")
    return out


def readme_tables(lm_summary: dict | None = None, vit_summary: dict | None = None,
                  analyses: dict | None = None) -> str:
    out = []
    if lm_summary:
        out += lm_tables(lm_summary)
    if analyses:
        out += analysis_tables(analyses)
    if vit_summary:
        out += ["", "Vision (the paper's Table 2):", "", vit_table(vit_summary).split("\n\n")[0]]
    return "\n".join(out).rstrip() + "\n"
