"""The ViT study's report: per setting (width, tokens, weight decay, Fisher images) and seed, the
base model and the best K-FAC and SVD edits by the training-only selection rule; whether the
paper's Table 2 claim (>= 5x fewer memorized labels, validation no worse) holds; a table and a
figure (memorized reduction and validation change against weight decay, one line per width)."""

from __future__ import annotations

from curvmem import io
from curvmem.report.paper import PAPER_TABLE2
from curvmem.report.vit import selection_score

CLAIM_REDUCTION = 5.0  # "memorized 81.6 -> 3.5 %" is 23x; the study asks for at least 5x
SETTING_KEYS = ("embed_dim", "depth", "num_heads", "tokens", "decay", "weight_decay", "epochs",
                "lr")
METRICS = ("memorized", "train_gt_acc", "clean_train_acc", "val_acc")


def _best(entries: dict) -> tuple[str, dict]:
    """The entry with the largest clean_train_acc - memorized; ties go to the first given."""
    name = max(entries, key=lambda n: selection_score(entries[n]))
    return name, entries[name]


def reduction(base_memorized: float, edited_memorized: float, n_noisy: int) -> float:
    """How many times fewer noisy labels are memorized; an edit that leaves none counts as
    leaving one image (so the ratio stays finite, and is a lower bound)."""
    return base_memorized / max(edited_memorized, 1.0 / n_noisy)


def cell_rows(cell: dict) -> list[dict]:
    """One row per Fisher image set of a cell (one trained model)."""
    s, base = cell["settings"], cell["base"]
    svd_name, svd = _best(cell["svd"]) if cell["svd"] else (None, None)
    rows = []
    for image_set, kfac in cell["kfac"].items():
        name, best = _best(kfac["entries"])
        red = reduction(base["memorized"], best["memorized"], base["n_noisy"])
        dval = best["val_acc"] - base["val_acc"]
        row = {"setting": {k: s[k] for k in SETTING_KEYS}, "seed": s["seed"],
               "images": image_set, "n_fisher_images": kfac["n_images"],
               "base": {k: base[k] for k in METRICS},
               "kfac": dict({k: best[k] for k in METRICS}, edit=name),
               "kfac_reduction": red, "kfac_val_change": dval,
               "claim_holds": bool(red >= CLAIM_REDUCTION and dval >= 0)}
        # a bound, not a selection: the most any edit of the sweep removes without costing
        # validation accuracy (so validation is used here, and only here)
        fair = [(reduction(base["memorized"], e["memorized"], base["n_noisy"]), n)
                for n, e in kfac["entries"].items() if e["val_acc"] >= base["val_acc"]]
        row["kfac_bound_no_worse"] = ({"edit": max(fair)[1], "reduction": max(fair)[0]}
                                      if fair else None)
        if svd is not None:
            row["svd"] = dict({k: svd[k] for k in METRICS}, edit=svd_name)
            row["svd_reduction"] = reduction(base["memorized"], svd["memorized"],
                                             base["n_noisy"])
            row["svd_val_change"] = svd["val_acc"] - base["val_acc"]
        rows.append(row)
    return rows


def _setting_id(row: dict) -> tuple:
    return tuple(row["setting"][k] for k in SETTING_KEYS) + (row["images"],)


def study_costs(paths: list, cells: list[dict]) -> dict:
    """The study's costs (for `<summary>.cost.json`): per cell, its setting, seed and model's
    training seconds, from each cell's cost file (or the `train_seconds` an older cell carried
    in its settings)."""
    out = []
    for path, cell in zip(paths, cells):
        s, measured = cell["settings"], io.read_cost(path) or {}
        out.append({"setting": {k: s[k] for k in SETTING_KEYS}, "seed": s["seed"],
                    "train_seconds": measured.get("train_seconds", s.get("train_seconds"))})
    return {"cells": out}


def summarize(cells: list[dict]) -> dict:
    """{"rows": per seed, "settings": seeds grouped (means and per-seed values), "claim": ...}."""
    if not cells:
        raise ValueError("report-vit-study needs at least one --cell")
    rows = [r for c in cells for r in cell_rows(c)]
    seen = {}
    for r in rows:
        key = _setting_id(r) + (r["seed"],)
        if key in seen:
            raise ValueError(f"two cells for one setting and seed: {r['setting']}, seed "
                             f"{r['seed']}, Fisher {r['images']}")
        seen[key] = r
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_setting_id(r), []).append(r)
    settings = []
    for group in groups.values():
        group.sort(key=lambda r: r["seed"])

        def mean(f, group=group):
            return sum(f(r) for r in group) / len(group)

        settings.append({
            "setting": group[0]["setting"], "images": group[0]["images"],
            "seeds": [r["seed"] for r in group],
            "base_memorized": mean(lambda r: r["base"]["memorized"]),
            "base_val_acc": mean(lambda r: r["base"]["val_acc"]),
            "kfac_memorized": mean(lambda r: r["kfac"]["memorized"]),
            "kfac_val_acc": mean(lambda r: r["kfac"]["val_acc"]),
            "kfac_reduction": mean(lambda r: r["kfac_reduction"]),
            "kfac_val_change": mean(lambda r: r["kfac_val_change"]),
            "svd_reduction": mean(lambda r: r.get("svd_reduction", 0.0)),
            "svd_val_change": mean(lambda r: r.get("svd_val_change", 0.0)),
            "claim_holds_every_seed": all(r["claim_holds"] for r in group),
            "claim_holds_some_seed": any(r["claim_holds"] for r in group)})
    image_order = {name: i for i, name in enumerate(("train", "clean", "heldout"))}
    settings.sort(key=lambda g: (g["setting"]["decay"] != "matrices", g["setting"]["embed_dim"],
                                 g["setting"]["depth"], g["setting"]["tokens"],
                                 g["setting"]["weight_decay"], image_order.get(g["images"], 9)))
    no_worse = [g for g in settings if g["kfac_val_change"] >= 0]
    largest = {"overall": max(settings, key=lambda g: g["kfac_reduction"]),
               "validation_no_worse": max(no_worse, key=lambda g: g["kfac_reduction"])
               if no_worse else None}
    bounds = [(r["kfac_bound_no_worse"]["reduction"], i) for i, r in enumerate(rows)
              if r["kfac_bound_no_worse"]]
    bound_row = rows[max(bounds)[1]] if bounds else None
    return {"rows": rows, "settings": settings,
            "claim": {"reduction_at_least": CLAIM_REDUCTION, "validation_no_worse": True,
                      "holds_every_seed": [g for g in settings if g["claim_holds_every_seed"]],
                      "holds_some_seed": [g for g in settings if g["claim_holds_some_seed"]],
                      "largest_reduction": largest,
                      "bound_any_edit_validation_no_worse": None if bound_row is None else {
                          "setting": bound_row["setting"], "seed": bound_row["seed"],
                          "images": bound_row["images"], **bound_row["kfac_bound_no_worse"]}},
            "selection_rule": "per cell and method: max(clean_train_acc - memorized) over "
                              "training images; validation is never used to choose",
            "paper_table2_percent": PAPER_TABLE2}


def _join(values, fmt: str = ".2f") -> str:
    """Per-seed values, ' / '-separated."""
    return " / ".join(format(v, fmt) for v in values)


def _pct(values) -> str:
    return _join((100 * v for v in values), ".1f")


def _setting_label(s: dict) -> str:
    return (f"w{s['embed_dim']} d{s['depth']} t{s['tokens']} wd{s['weight_decay']:g}"
            + ("" if s["decay"] == "matrices" else f" ({s['decay']})"))


def _bound_text(bound) -> str:
    if bound is None:
        return "none"
    return (f"{bound['reduction']:.2f}× ({bound['edit']}, {_setting_label(bound['setting'])}, "
            f"seed {bound['seed']}, Fisher {bound['images']})")


def table_markdown(summary: dict) -> str:
    """One line per setting and Fisher image set; seeds separated by ' / '."""
    by_id = {}
    for r in summary["rows"]:
        by_id.setdefault(_setting_id(r), []).append(r)
    lines = ["| width | tokens | decay on | weight decay | Fisher images | seeds | base memorized % "
             "| base val % | K-FAC memorized % | K-FAC reduction × | K-FAC val change (pts) | "
             "K-FAC edit selected | SVD memorized % | SVD val change (pts) | claim |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in summary["settings"]:
        s = g["setting"]
        rs = sorted(by_id[tuple(s[k] for k in SETTING_KEYS) + (g["images"],)],
                    key=lambda r: r["seed"])
        holds = "yes" if g["claim_holds_every_seed"] else (
            "some seeds" if g["claim_holds_some_seed"] else "no")
        lines.append(
            f"| {s['embed_dim']} | {s['tokens']} | {s['decay']} | {s['weight_decay']:g} | "
            f"{g['images']} ({rs[0]['n_fisher_images']}) | {', '.join(map(str, g['seeds']))} | "
            f"{_pct(r['base']['memorized'] for r in rs)} | "
            f"{_pct(r['base']['val_acc'] for r in rs)} | "
            f"{_pct(r['kfac']['memorized'] for r in rs)} | "
            f"{_join(r['kfac_reduction'] for r in rs)} | "
            f"{_join((100 * r['kfac_val_change'] for r in rs), '+.1f')} | "
            f"{', '.join(dict.fromkeys(r['kfac']['edit'] for r in rs))} | "
            f"{_pct(r['svd']['memorized'] for r in rs if 'svd' in r)} | "
            f"{_join((100 * r['svd_val_change'] for r in rs if 'svd' in r), '+.1f')} | "
            f"{holds} |")
    c = summary["claim"]

    def described(g):
        return ("none" if g is None else
                f"{_setting_label(g['setting'])}, Fisher {g['images']}: "
                f"{g['kfac_reduction']:.2f}× (mean over seeds {g['seeds']}), validation "
                f"{100 * g['kfac_val_change']:+.1f} pts")

    lines += ["", f"Claim (paper Table 2): K-FAC memorized reduction ≥ {CLAIM_REDUCTION:g}× with "
              "validation accuracy no worse. Holds for every seed in "
              f"{len(c['holds_every_seed'])} of {len(summary['settings'])} settings, for some "
              f"seed in {len(c['holds_some_seed'])}. Largest reduction: "
              f"{described(c['largest_reduction']['overall'])}; largest with validation no "
              f"worse (seed mean): {described(c['largest_reduction']['validation_no_worse'])}. "
              "Paper: 81.6 → 3.5 % (23×), validation +4.7 pts.",
              "", "Bound (validation used, so not a result of the method): over every K-FAC edit "
              "of every cell, the largest reduction that leaves validation accuracy no worse: "
              + _bound_text(c["bound_any_edit_validation_no_worse"]) + ".",
              "", "Selection: " + summary["selection_rule"] + ". Width 64 / 192; tokens: patch "
              "tokens per image (4: 4×4 patches, 16: 2×2 patches); decay on `matrices`: weight "
              "matrices only, `all`: every parameter (the default preset's recipe)."]
    return "\n".join(lines) + "\n"


def plot_study(summary: dict, path) -> None:
    """Columns: Fisher image sets. Top: K-FAC memorized reduction (×, log) against weight decay;
    bottom: validation change (points). One line per width (and tokens), seed means with the
    seeds as dots; the default recipe (decay on all parameters) as stars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    image_sets = list(dict.fromkeys(r["images"] for r in summary["rows"]))
    wds = sorted({r["setting"]["weight_decay"] for r in summary["rows"]})
    xpos = {wd: i for i, wd in enumerate(wds)}  # even spacing: 0, 0.05, 0.1, 0.3, 1 read apart
    colours = {64: "tab:blue", 192: "tab:orange"}
    fig, axes = plt.subplots(2, len(image_sets), figsize=(4.6 * len(image_sets), 7.4),
                             sharex=True, sharey="row", squeeze=False)
    for j, image_set in enumerate(image_sets):
        lines: dict[tuple, list[dict]] = {}
        for r in summary["rows"]:
            if r["images"] == image_set:
                s = r["setting"]
                lines.setdefault((s["decay"], s["embed_dim"], s["tokens"], s["depth"]),
                                 []).append(r)
        for (decay, width, tokens, depth), rs in sorted(lines.items(), key=lambda kv: (
                kv[0][0] != "matrices", kv[0][1], kv[0][2])):
            colour = colours.get(width, "tab:gray") if decay == "matrices" else "black"
            label = (f"width {width}, {tokens} tokens" + (f", depth {depth}" if depth != 6 else "")
                     + ("" if decay == "matrices" else ", decay on all (default recipe)"))
            for row_i, (key, scale) in enumerate((("kfac_reduction", 1.0),
                                                  ("kfac_val_change", 100.0))):
                ax = axes[row_i][j]
                by_wd: dict[float, list[float]] = {}
                for r in rs:
                    by_wd.setdefault(r["setting"]["weight_decay"], []).append(scale * r[key])
                xs = sorted(by_wd)
                means = [sum(by_wd[x]) / len(by_wd[x]) for x in xs]
                style = "-" if tokens == 4 else "--"
                marker = "o" if decay == "matrices" else "*"
                shift = 0.0 if decay == "matrices" else 0.12  # beside, not on, a line's point
                ax.plot([xpos[x] + shift for x in xs], means, style, marker=marker, color=colour,
                        markersize=7 if marker == "o" else 12, label=label)
                for x in xs:
                    if len(by_wd[x]) > 1:
                        ax.scatter([xpos[x] + shift] * len(by_wd[x]), by_wd[x], s=12,
                                   color=colour, alpha=0.5, zorder=3)
        top, bottom = axes[0][j], axes[1][j]
        top.set_yscale("log")
        top.set_yticks([1, 2, 5, 10, 20], ["1", "2", "5", "10", "20"])
        top.minorticks_off()
        top.axhline(CLAIM_REDUCTION, color="red", ls=":", lw=1.2, label="claim: 5×")
        paper = PAPER_TABLE2["Baseline"]["memorized"] / PAPER_TABLE2["K-FAC"]["memorized"]
        top.axhline(paper, color="green", ls=":", lw=1.2, label=f"paper: {paper:.0f}×")
        top.set_title(f"Fisher on {image_set} images")
        bottom.axhline(0, color="red", ls=":", lw=1.2, label="no worse")
        dval = PAPER_TABLE2["K-FAC"]["val_acc"] - PAPER_TABLE2["Baseline"]["val_acc"]
        bottom.axhline(dval, color="green", ls=":", lw=1.2, label=f"paper: {dval:+.1f}")
        bottom.set_xticks(range(len(wds)), [f"{w:g}" for w in wds])
        bottom.set_xlim(-0.5, len(wds) - 0.5)
        bottom.set_xlabel("weight decay")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("memorized reduction (×, log)")
    axes[1][0].set_ylabel("validation change (points)")
    axes[0][0].set_ylim(0.8, 30)
    handles, labels = axes[0][0].get_legend_handles_labels()
    h2, l2 = axes[1][0].get_legend_handles_labels()
    extra = [(h, lab) for h, lab in zip(h2, l2) if lab not in labels]
    fig.legend(handles + [h for h, _ in extra], labels + [lab for _, lab in extra],
               loc="lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle("ViT study: selected K-FAC edit (training-only rule) against weight decay; "
                 "lines: seed means, dots: seeds", fontsize=11)
    fig.tight_layout(rect=(0, 0.09, 1, 0.97))
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


# --------------------------------------------------------------------------- deciding Table 2
# docs/vision.md, "Deciding Table 2". The rules below were fixed before the runs they judge.

ORACLE_FRACTION = 0.2      # the oracle must take memorized to <= 1/5 of base at val >= base
CONTROL_REDUCTION = 5.0    # the positive control is removed: >= 5x fewer memorized ...
CONTROL_VAL_DROP = 0.01    # ... at no more than 1 point of validation accuracy lost
CONTROL_MARK_SHARE = 0.5   # the control is valid if the marks carry memorization: without them
                           # the model memorizes <= half of what it does with them
KNOCKOUT_REDUCTION = 2.0   # a branch holds the noisy labels selectively: its knockout halves
KNOCKOUT_VAL_DROP = 0.05   # memorization while validation falls by <= 5 points
PROBE_KNOWS = 0.5          # the CLS features carry the true class of most memorized images
PAPER_POSITION, PAPER_IMAGES = "all", "train"  # the paper's edit: every token, training Fisher
DECIDE_RULES = {
    "table2": f"selected K-FAC edit (max clean_train_acc - memorized on the selection half): "
              f"reported-half memorized reduction >= {CLAIM_REDUCTION:g}x and validation no "
              "worse",
    "oracle": f"fine-tuning only the edited weights on true labels reaches memorized <= "
              f"{ORACLE_FRACTION:g} x base (reported half) at some epoch with validation >= "
              "base; otherwise no edit of those weights can give Table 2",
    "control": f"on a watermarked model, the selected K-FAC edit at every token (Fisher on "
               f"images without marks) removes >= {CONTROL_REDUCTION:g}x of the memorized labels "
               f"at <= {100 * CONTROL_VAL_DROP:g} validation points lost; valid only if removing "
               f"the marks alone leaves <= {CONTROL_MARK_SHARE:g} of the memorization. The "
               "planted control (the noise-free model with the marked noisy labels tuned into "
               "the edited weights alone) decides whether the pipeline works; the trained one "
               "(a model trained on the marked data) whether training puts them where it edits",
    "knockout": f"a branch (a block's attention or MLP) holds the noisy labels selectively if "
                f"zeroing it cuts memorized >= {KNOCKOUT_REDUCTION:g}x at <= "
                f"{100 * KNOCKOUT_VAL_DROP:g} validation points lost",
    "probe": f"the model knows the true class of its memorized images if a linear probe on the "
             f"head's input, fitted on clean training images, gets >= {PROBE_KNOWS:g} of the "
             "noisy images' true labels (reported half)",
}


def _role(doc: dict) -> str:
    d = doc.get("data_config", {})
    if "planted" in doc:
        return "planted"
    if d.get("noise") == 0 or d.get("n_noisy") == 0:
        return "noise_free"
    return "control" if d.get("watermark") else "base"


def _mem(row: dict) -> float:
    """The reported memorized fraction: the reported half's where the noisy images are split."""
    return row["memorized_report"] if "memorized_report" in row else row["memorized"]


def _n_reported(row: dict) -> int:
    return row["n_report"] if "n_report" in row else row["n_noisy"]


def decide_score(row: dict) -> float:
    """The selection rule on training images only, with the selection half's memorized."""
    mem = row["memorized_select"] if "memorized_select" in row else row["memorized"]
    return (row["clean_train_acc"] or 0.0) - (mem or 0.0)


def _selected(base: dict, entries: dict) -> dict | None:
    """The entry `decide_score` picks (ties: the first given), its reported-half reduction and
    validation change."""
    if not entries:
        return None
    name = max(entries, key=lambda n: decide_score(entries[n]))
    e = entries[name]
    red = reduction(_mem(base), _mem(e), _n_reported(base))
    return {"edit": name, "memorized": _mem(e), "val_acc": e["val_acc"],
            "clean_train_acc": e["clean_train_acc"], "reduction": red,
            "val_change": e["val_acc"] - base["val_acc"]}


def _by_position(kfac: dict, images: str) -> dict:
    out: dict[str, dict] = {}
    for name, e in kfac.get(images, {}).get("entries", {}).items():
        out.setdefault(e.get("position", "all"), {})[name] = e
    return out


def table2_rows(cell: dict) -> list[dict]:
    """Per Fisher image set and edit position: the selected K-FAC edit and the Table 2 rule;
    and a bound (validation used, so no result of the method): the largest reported-half
    reduction of any edit there with validation no worse."""
    base, rows = cell["base"], []
    for images in cell["kfac"]:
        for position, entries in _by_position(cell["kfac"], images).items():
            sel = _selected(base, entries)
            fair = [reduction(_mem(base), _mem(e), _n_reported(base))
                    for e in entries.values() if e["val_acc"] >= base["val_acc"]]
            rows.append({"images": images, "position": position, "selected": sel,
                         "holds": bool(sel["reduction"] >= CLAIM_REDUCTION
                                       and sel["val_change"] >= 0),
                         "bound_validation_no_worse": max(fair) if fair else None})
    return rows


def oracle_result(doc: dict) -> dict:
    """The oracle's best epoch: the lowest reported memorized with validation >= base."""
    base, history = doc["base"], doc["history"]
    fair = [h for h in history if h["val_acc"] >= base["val_acc"]]
    best = min(fair, key=lambda h: (_mem(h), h["epoch"]))  # epoch 0 (the base) is always fair
    red = reduction(_mem(base), _mem(best), _n_reported(base))
    last = history[-1]
    return {"best_epoch": best["epoch"], "memorized": _mem(best), "val_acc": best["val_acc"],
            "reduction": red, "last": {"epoch": last["epoch"], "memorized": _mem(last),
                                       "val_acc": last["val_acc"],
                                       "train_gt_acc": last["train_gt_acc"]},
            "layers": doc["layers"], "modules": doc["modules"], "epochs": doc["epochs"],
            "reaches": bool(_mem(best) <= ORACLE_FRACTION * _mem(base)
                            or red >= 1.0 / ORACLE_FRACTION)}


def knockout_result(doc: dict) -> dict:
    base, rows = doc["base"], []
    for r in doc["knockouts"]:
        red = reduction(_mem(base), _mem(r), _n_reported(base))
        rows.append({"block": r["block"], "part": r["part"], "memorized": _mem(r),
                     "val_acc": r["val_acc"], "clean_train_acc": r["clean_train_acc"],
                     "reduction": red,
                     "selective": bool(red >= KNOCKOUT_REDUCTION and
                                       base["val_acc"] - r["val_acc"] <= KNOCKOUT_VAL_DROP)})
    return {"rows": rows, "selective": [f"block {r['block']} {r['part']}" for r in rows
                                        if r["selective"]]}


def probe_result(doc: dict) -> dict:
    probes, base = doc["probes"], doc["base"]
    head = probes["head_input"]
    acc = head.get("noisy_true_acc_report", head["noisy_true_acc"])
    return {"sites": probes, "head_noisy_true_acc": acc,
            "model_train_gt_acc": base.get("train_gt_acc_report", base["train_gt_acc"]),
            "knows_true_class": bool(acc >= PROBE_KNOWS)}


def control_result(cell: dict, images: str) -> dict:
    base = cell["base"]
    if images not in cell["kfac"]:
        raise ValueError(f"the control's cell has no K-FAC edits with the Fisher on '{images}' "
                         f"images (it has {sorted(cell['kfac'])})")
    unmarked = cell.get("base_unmarked")
    share = None if unmarked is None or not _mem(base) else _mem(unmarked) / _mem(base)
    out = {"images": images, "base_memorized": _mem(base), "base_val_acc": base["val_acc"],
           "unmarked_memorized": None if unmarked is None else _mem(unmarked),
           "mark_share_left": share,
           "valid": bool(share is not None and share <= CONTROL_MARK_SHARE), "positions": {}}
    for position, entries in _by_position(cell["kfac"], images).items():
        sel = _selected(base, entries)
        out["positions"][position] = dict(sel, removed=bool(
            sel["reduction"] >= CONTROL_REDUCTION and sel["val_change"] >= -CONTROL_VAL_DROP))
    return out


def _points(group: dict, control_images: str) -> dict:
    """What the figure draws: [memorized % (reported), val %] of every K-FAC edit (the base
    model's with the paper's Fisher images, the control's with its own) and oracle epoch."""
    out = {}
    for role, images in (("base", PAPER_IMAGES), ("control", control_images),
                         ("planted", control_images)):
        cell = group.get(f"{role}_cell")
        if cell is None:
            continue
        for position, entries in _by_position(cell["kfac"], images).items():
            out[f"{role}_{position}"] = [[100 * _mem(e), 100 * e["val_acc"]]
                                         for e in entries.values()]
    if "base_oracle" in group:
        out["oracle"] = [[100 * _mem(h), 100 * h["val_acc"]]
                         for h in group["base_oracle"]["history"]]
    return out


def _verdict(control_ok, control_valid, reachable, claim_paper, claim_any) -> str:
    if claim_paper:
        return "holds: the paper's edit gives Table 2"
    if control_valid is False:
        return "undecided: the watermark did not carry the planted memorization"
    if control_ok is False:
        return "bug suspected: the pipeline does not remove the planted low-curvature memorization"
    if reachable is False:
        return "unreachable by construction: no change of the edited weights removes it"
    if claim_any:
        return "holds only off the paper's protocol (another Fisher set or position)"
    if control_ok and reachable:
        return ("setting: the pipeline removes planted low-curvature memorization and the edited "
                "weights can hold the fix, but these noisy labels are not stored where the "
                "curvature edit removes them")
    return "undecided: an experiment is missing"


def decide_summary(docs: list[dict], control_images: str = "clean") -> dict:
    """Cells and experiments (`vit-study-cell`, `vit-study-experiment` outputs) of one study,
    grouped per setting and seed (datasets told apart by their role: base, noise_free (the
    validation ceiling) and control (watermarked)); every rule of DECIDE_RULES per seed; the
    verdict per seed and over all seeds."""
    if not docs:
        raise ValueError("report-vit-decide needs at least one cell or experiment")
    groups: dict[tuple, dict] = {}
    for doc in docs:
        s = doc["settings"]
        key = tuple(s[k] for k in SETTING_KEYS) + (s["seed"],
                                                   doc.get("data_config", {}).get("source"))
        slot = groups.setdefault(key, {"setting": {k: s[k] for k in SETTING_KEYS},
                                       "seed": s["seed"],
                                       "source": doc.get("data_config", {}).get("source")})
        role = _role(doc)
        name = f"{role}_{doc['experiment']}" if "experiment" in doc else f"{role}_cell"
        if name in slot:
            raise ValueError(f"two {name.replace('_', ' ')} results for {slot['setting']}, "
                             f"seed {s['seed']}")
        slot[name] = doc
    out = []
    for key in sorted(groups, key=lambda k: tuple(str(x) for x in k)):
        g = groups[key]
        row = {"setting": g["setting"], "seed": g["seed"], "source": g["source"]}
        cell = g.get("base_cell")
        if cell is not None:
            base = cell["base"]
            row["base"] = {"memorized": _mem(base), "val_acc": base["val_acc"],
                           "clean_train_acc": base["clean_train_acc"],
                           "train_gt_acc": base.get("train_gt_acc_report", base["train_gt_acc"]),
                           "n_reported": _n_reported(base)}
            row["table2"] = table2_rows(cell)
        if "noise_free_cell" in g:
            ceiling = g["noise_free_cell"]["base"]["val_acc"]
            row["ceiling"] = {"val_acc": ceiling, "headroom": None if cell is None else
                              ceiling - cell["base"]["val_acc"]}
        if "base_oracle" in g:
            row["oracle"] = oracle_result(g["base_oracle"])
        for role in ("base", "control"):
            if f"{role}_knockout" in g:
                row[f"{role}_knockout"] = knockout_result(g[f"{role}_knockout"])
            if f"{role}_probe" in g:
                row[f"{role}_probe"] = probe_result(g[f"{role}_probe"])
        for role in ("control", "planted"):
            if f"{role}_cell" in g:
                row[role] = control_result(g[f"{role}_cell"], control_images)
        row["points"] = _points(g, control_images)
        paper = [r for r in row.get("table2", []) if r["images"] == PAPER_IMAGES
                 and r["position"] == PAPER_POSITION]
        control = row.get("planted", row.get("control"))  # the planted one decides
        row["decision"] = {
            "claim_paper_protocol": bool(paper and paper[0]["holds"]) if paper else None,
            "claim_any_fisher_or_position": any(r["holds"] for r in row.get("table2", []))
            if "table2" in row else None,
            "oracle_reaches": row["oracle"]["reaches"] if "oracle" in row else None,
            "control_judged": None if not control else
            ("planted" if "planted" in row else "trained"),
            "control_valid": control["valid"] if control else None,
            "control_removed": control["positions"][PAPER_POSITION]["removed"]
            if control and PAPER_POSITION in control["positions"] else None,
            "knows_true_class": row["base_probe"]["knows_true_class"]
            if "base_probe" in row else None}
        d = row["decision"]
        row["decision"]["verdict"] = _verdict(d["control_removed"], d["control_valid"],
                                              d["oracle_reaches"], d["claim_paper_protocol"],
                                              d["claim_any_fisher_or_position"])
        out.append(row)
    verdicts = sorted({r["decision"]["verdict"] for r in out if "table2" in r})
    return {"rows": out, "rules": DECIDE_RULES, "control_images": control_images,
            "verdict": verdicts[0] if len(verdicts) == 1 else
            ("seeds disagree: " + " | ".join(verdicts) if verdicts else "no base model"),
            "selection_rule": "per Fisher image set and edit position: max(clean_train_acc - "
                              "memorized of the selection half) over training images; the "
                              "reported half and validation are never used to choose",
            "paper_table2_percent": PAPER_TABLE2}


def _p(x, fmt=".1f") -> str:
    return "–" if x is None else format(100 * x, fmt)


def decide_markdown(summary: dict) -> str:
    """The decision's tables: per seed, base and ceiling, Table 2 per Fisher set and position,
    the oracle, the positive control, the probes and the knockouts; the rules; the verdict."""
    rows = summary["rows"]

    def label(r):
        return f"seed {r['seed']}" + ("" if r["source"] in (None, "digits") else
                                      f" ({r['source']})")

    lines = [f"**Verdict**: {summary['verdict']}.", "",
             "| model | base memorized % (reported half) | base val % | noise-free val % "
             "(ceiling) | headroom (pts) | oracle memorized % at val ≥ base (epoch) | oracle × "
             "| oracle ≥ 5× | probe: true class of noisy % | model's train gt % | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "base" not in r:
            continue
        o, c, pr = r.get("oracle"), r.get("ceiling"), r.get("base_probe")
        oracle_at = "–" if not o else f"{_p(o['memorized'])} ({o['best_epoch']})"
        lines.append(
            f"| {label(r)} | {_p(r['base']['memorized'])} ({r['base']['n_reported']}) | "
            f"{_p(r['base']['val_acc'])} | {_p(c and c['val_acc'])} | "
            f"{'–' if not c or c['headroom'] is None else format(100 * c['headroom'], '+.1f')}"
            " | "
            f"{oracle_at} | "
            f"{'–' if not o else format(o['reduction'], '.2f')} | "
            f"{'–' if not o else ('yes' if o['reaches'] else 'no')} | "
            f"{_p(pr and pr['head_noisy_true_acc'])} | {_p(r['base']['train_gt_acc'])} | "
            f"{r['decision']['verdict'].split(':')[0]} |")
    lines += ["", "Table 2 (selected K-FAC edit per Fisher set and position):", "",
              "| model | Fisher images | position | edit selected | memorized % (reported) | "
              "reduction × | val change (pts) | holds | bound: max × at val no worse |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for t in r.get("table2", []):
            s = t["selected"]
            b = t["bound_validation_no_worse"]
            lines.append(f"| {label(r)} | {t['images']} | {t['position']} | {s['edit']} | "
                         f"{_p(s['memorized'])} | {s['reduction']:.2f} | "
                         f"{100 * s['val_change']:+.1f} | {'yes' if t['holds'] else 'no'} | "
                         f"{'–' if b is None else format(b, '.2f')} |")
    controls = [(r, role) for role in ("planted", "control") for r in rows if role in r]
    if controls:
        lines += ["", f"Positive controls (Fisher on {summary['control_images']} images; planted: "
                  "the noise-free model with the marked noisy labels tuned into the edited "
                  "weights alone; trained: a model trained on the marked data):", "",
                  "| model | control | base memorized % | without marks % | valid | position | "
                  "edit selected | memorized % | reduction × | val change (pts) | removed |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r, role in controls:
            c = r[role]
            kind = "planted" if role == "planted" else "trained"
            for position, s in c["positions"].items():
                lines.append(f"| {label(r)} | {kind} | {_p(c['base_memorized'])} | "
                             f"{_p(c['unmarked_memorized'])} | {'yes' if c['valid'] else 'no'} |"
                             f" {position} | {s['edit']} | {_p(s['memorized'])} | "
                             f"{s['reduction']:.2f} | {100 * s['val_change']:+.1f} | "
                             f"{'yes' if s['removed'] else 'no'} |")
    for role, title in (("base", "base model"), ("control", "watermarked model")):
        knock = [r for r in rows if f"{role}_knockout" in r]
        if not knock:
            continue
        parts = [(k["block"], k["part"]) for k in knock[0][f"{role}_knockout"]["rows"]]
        lines += ["", f"Knockouts, {title} (memorized % / val %, one column per seed):", "",
                  "| branch | " + " | ".join(label(r) for r in knock) + " |",
                  "|---|" + "---|" * len(knock)]
        for i, (block, part) in enumerate(parts):
            cells = [r[f"{role}_knockout"]["rows"][i] for r in knock]
            lines.append(f"| block {block} {part} | " + " | ".join(
                f"{_p(k['memorized'])} / {_p(k['val_acc'])}" + (" (selective)" if k["selective"]
                                                              else "") for k in cells) + " |")
    probes = [r for r in rows if "base_probe" in r]
    if probes:
        sites = list(probes[0]["base_probe"]["sites"])
        lines += ["", "Linear probes on the base model's CLS features (fitted on clean training "
                  "images): noisy images' true class % / noisy label % / val %:", "",
                  "| site | " + " | ".join(label(r) for r in probes) + " |",
                  "|---|" + "---|" * len(probes)]
        for site in sites:
            lines.append(f"| {site} | " + " | ".join(
                f"{_p(p.get('noisy_true_acc_report', p['noisy_true_acc']))} / "
                f"{_p(p['noisy_label_rate'])} / {_p(p['val_acc'])}"
                for p in (r["base_probe"]["sites"][site] for r in probes)) + " |")
    lines += ["", "Rules (fixed before the runs):", ""]
    lines += [f"- **{k}**: {v}" for k, v in summary["rules"].items()]
    lines += ["", "Selection: " + summary["selection_rule"] + "."]
    return "\n".join(lines) + "\n"


def plot_decide(summary: dict, path) -> None:
    """Per seed (rows): memorized (reported half) against validation for the base model's K-FAC
    edits (Fisher on training images; every token / CLS only), the oracle's epochs, the base
    and the noise-free ceiling; the watermarked control's edits; the knockouts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in summary["rows"] if "base" in r or "control" in r or "planted" in r]
    fig, axes = plt.subplots(max(1, len(rows)), 3, figsize=(14, 3.8 * max(1, len(rows))),
                             squeeze=False)
    for i, r in enumerate(rows):
        ax, axc, axk = axes[i]
        for t in r.get("table2", []):
            if t["images"] != PAPER_IMAGES:
                continue
            s = t["selected"]
            ax.scatter([100 * s["memorized"]], [100 * s["val_acc"]], s=90, facecolors="none",
                       edgecolors="black", zorder=4)
        points = {}
        points = r.get("points", {})
        for position, colour, marker in (("all", "tab:blue", "o"), ("cls", "tab:orange", "s")):
            if points.get(f"base_{position}"):
                ax.scatter(*zip(*points[f"base_{position}"]), s=14, color=colour, marker=marker,
                           label=f"K-FAC edits ({position} tokens)")
        if points.get("oracle"):
            xs, ys = zip(*points["oracle"])
            ax.plot(xs, ys, "-", color="tab:green", marker=".", label="oracle epochs")
        if "base" in r:
            ax.scatter([100 * r["base"]["memorized"]], [100 * r["base"]["val_acc"]], marker="*",
                       s=160, color="red", zorder=5, label="base")
        if r.get("ceiling"):
            ax.axhline(100 * r["ceiling"]["val_acc"], color="gray", ls="--",
                       label="noise-free model (ceiling)")
        ax.set_title(f"seed {r['seed']}: base model, Fisher on training images")
        ax.set_xlabel("memorized % (reported half)")
        ax.set_ylabel("validation %")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        for role, colours in (("planted", ("tab:blue", "tab:orange")),
                              ("control", ("tab:cyan", "gold"))):
            c = r.get(role)
            if not c:
                continue
            kind = "planted" if role == "planted" else "trained"
            for position, colour, marker in (("all", colours[0], "o"), ("cls", colours[1], "s")):
                if points.get(f"{role}_{position}"):
                    axc.scatter(*zip(*points[f"{role}_{position}"]), s=14, color=colour,
                                marker=marker, label=f"{kind}: K-FAC edits ({position} tokens)")
            axc.scatter([100 * c["base_memorized"]], [100 * c["base_val_acc"]], marker="*",
                        s=160, color="red" if role == "planted" else "darkred", zorder=5,
                        label=f"{kind}: before the edit")
            axc.axvline(100 * c["base_memorized"] / CONTROL_REDUCTION, color="red", ls=":",
                        lw=0.8)
        if r.get("planted") or r.get("control"):
            axc.legend(fontsize=6)
        axc.set_title(f"positive controls, Fisher on {summary['control_images']} images "
                      "(dotted: 5x)")
        axc.set_xlabel("memorized % (reported half)")
        k = r.get("base_knockout")
        if k:
            names = [f"{x['block']}{x['part'][0]}" for x in k["rows"]]
            axk.bar(range(len(names)), [100 * x["memorized"] for x in k["rows"]],
                    color=["tab:purple" if x["part"] == "attn" else "tab:olive"
                           for x in k["rows"]])
            axk.plot(range(len(names)), [100 * x["val_acc"] for x in k["rows"]], "k.",
                     label="validation %")
            axk.axhline(100 * r["base"]["memorized"], color="red", ls=":", label="base memorized")
            axk.set_xticks(range(len(names)), names, fontsize=7)
            axk.legend(fontsize=7)
        axk.set_title("knockouts (block, a: attention, m: MLP): memorized %")
    fig.tight_layout()
    with io.atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
