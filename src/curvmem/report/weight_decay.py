"""The language model trained at several weight decays, side by side (issue 21, the paper's App. H.1).

The paper trains ViTs at several weight decays and reports that "higher weight decay typically
causes more drastic specialization": memorization separates further into the low-curvature
directions. Each run here is the same config (world, factors, sweep, selection rule) with only
`lm.model.weight_decay` changed, so each trains its own model and selects its own edits (on
validation data only).

What a run shows, and what H.1 predicts of it against the undecayed run (weight decay 0). The
predictions are fixed here, before any decayed run was seen; each is yes/no per decayed run:

- `activation_gap_wider`: the activation ratio (memorized ÷ clean positions, curvmem.analysis) of
  the bottom-50 % K-FAC band minus that of the top-10 % band, averaged over the analysed modules,
  is larger than at weight decay 0 (memorized inputs lean further toward low curvature).
- `complement_gap_wider`: the complement control (`kfac-bottom`: keep the *low*-curvature pairs at
  the controls' setting) recites more of forget-validation, minus what the top-curvature edit of
  the same setting recites, than at weight decay 0 (the low pairs hold more of the memorized text).
- `selected_tradeoff_better`: the selected K-FAC edit recites fewer quotes (the untargeted set,
  read by no selection) at a perplexity rise no larger than at weight decay 0.

The base model's own memorization is reported beside them: decay that stops the model memorizing
would make the comparisons moot, and the table says so rather than hiding it.
"""

from __future__ import annotations

from curvmem.report.lm import _f
from curvmem.report.paper import TASK_CATEGORIES
from curvmem.report.seeds import (
    band_means,
    control_names,
    control_reference,
    edit_numbers,
    selected,
)

PREDICTIONS = {
    "activation_gap_wider": "bottom-50 % minus top-10 % activation ratio wider than at decay 0",
    "complement_gap_wider": "complement control recites more forget-validation (minus the "
                            "top edit) than at decay 0",
    "selected_tradeoff_better": "selected K-FAC edit: fewer quotes at no larger perplexity rise "
                                "than at decay 0",
}


def _edit(summary: dict, name: str | None) -> dict | None:
    return {"name": name, **edit_numbers(summary, name)} if name else None


def run_numbers(run: dict) -> dict:
    """What the comparison reads of one run (`curvmem.report.seeds.load_run`'s dict)."""
    s = run["lm"]
    base = s["models"]["base"]
    controls = control_names(s)
    complement = next((n for n in controls if n.startswith("kfac-bottom-")), None)
    random_mass = next((n for n in controls if n.startswith("kfac-random-mass-")), None)
    activation = (run.get("analyses") or {}).get("activation_ratio")
    bands = band_means(activation)
    return {
        "base": {"forget": base["forget"]["strict"],
                 "forget_validation": (base.get("forget_validation") or {}).get("strict"),
                 "untargeted": base["untargeted"]["strict"], "perplexity": base["perplexity"],
                 **{c: base["tasks"].get(c) for c in TASK_CATEGORIES}},
        "selected": {m: _edit(s, n) for m, n in selected(s).items()},
        "reference": _edit(s, control_reference(s)),
        "complement": _edit(s, complement),
        "random_mass": _edit(s, random_mass),
        "activation": None if bands is None else {
            "band_labels": activation["band_labels"], **bands,
            "gap": bands["kfac_pairs"][-1] - bands["kfac_pairs"][0]},
    }


def _complement_gap(numbers: dict) -> float | None:
    c, r = numbers["complement"], numbers["reference"]
    if not c or not r or None in (c.get("forget_validation"), r.get("forget_validation")):
        return None
    return c["forget_validation"] - r["forget_validation"]


def predictions(numbers: dict, undecayed: dict) -> dict:
    """{prediction: True/False/None (not testable)} of one decayed run against decay 0."""
    out = {}
    a, a0 = numbers["activation"], undecayed["activation"]
    out["activation_gap_wider"] = a["gap"] > a0["gap"] if a and a0 else None
    g, g0 = _complement_gap(numbers), _complement_gap(undecayed)
    out["complement_gap_wider"] = g > g0 if None not in (g, g0) else None
    k, k0 = numbers["selected"]["kfac"], undecayed["selected"]["kfac"]
    if k and k0 and None not in (k["ppl_rise"], k0["ppl_rise"]):
        out["selected_tradeoff_better"] = (k["untargeted"] < k0["untargeted"]
                                           and k["ppl_rise"] <= k0["ppl_rise"])
    else:
        out["selected_tradeoff_better"] = None
    return out


def compare(runs: dict[float, dict[int, dict]]) -> dict:
    """{weight decay: {seed: load_run dict}} -> every run's numbers, and H.1's predictions for each
    decayed run against the undecayed run of the same seed."""
    if 0.0 not in runs:
        raise ValueError(f"weight decays {sorted(runs)}: the comparison needs the undecayed run "
                         f"(weight decay 0) as its reference")
    if len(runs) < 2:
        raise ValueError("weight decays: give the undecayed run and at least one decayed run")
    wds = sorted(runs)
    numbers = {wd: {seed: run_numbers(runs[wd][seed]) for seed in sorted(runs[wd])} for wd in wds}
    verdicts = {}
    for wd in wds[1:]:
        missing = sorted(set(numbers[wd]) - set(numbers[0.0]))
        if missing:
            raise ValueError(f"weight decay {wd}: seeds {missing} have no undecayed run to "
                             f"compare with (undecayed seeds: {sorted(numbers[0.0])})")
        verdicts[wd] = {seed: predictions(n, numbers[0.0][seed]) for seed, n in numbers[wd].items()}
    counts = {p: {"holds": sum(v[p] is True for per in verdicts.values() for v in per.values()),
                  "tested": sum(v[p] is not None for per in verdicts.values() for v in per.values())}
              for p in PREDICTIONS}
    return {"analysis": "lm_weight_decay", "definition": __doc__.strip(),
            "predictions": PREDICTIONS, "weight_decays": wds,
            "seeds": {str(wd): sorted(numbers[wd]) for wd in wds},
            "runs": {str(wd): {str(seed): n for seed, n in numbers[wd].items()} for wd in wds},
            "verdicts": {str(wd): {str(seed): v for seed, v in per.items()}
                         for wd, per in verdicts.items()},
            "counts": counts}


def _pct(x, sign=False):
    if x is None:
        return "–"
    return f"{100 * x:+.1f} %" if sign else f"{100 * x:.1f} %"


def _num(x, fmt="{:.2f}"):
    return _f(x, fmt)


def _shown_edit(r: dict, *path: str) -> dict:
    """The edit at `path` in one run's numbers (`reference`, or `selected`, `kfac`); {} if none."""
    for key in path:
        r = r[key]
    return r or {}


def _recited_and_rise(recited: str, *path: str):
    """A row cell: what the edit at `path` recites (field `recited`) and its perplexity rise."""
    return lambda r: (f"{_pct(_shown_edit(r, *path).get(recited))}, "
                      f"{_pct(_shown_edit(r, *path).get('ppl_rise'), sign=True)}")


ROWS = [  # (label, what one run shows)
    ("base: forget / quotes recited (strict)",
     lambda r: f"{_pct(r['base']['forget'])}, {_pct(r['base']['untargeted'])}"),
    ("base: held-out perplexity", lambda r: _num(r["base"]["perplexity"])),
    ("base: closed-book, open-book, arithmetic, logic",
     lambda r: ", ".join(_num(r["base"][c]) for c in TASK_CATEGORIES)),
    ("activation ratio, K-FAC top-10 % / bottom-50 %",
     lambda r: "–" if not r["activation"] else
     f"{r['activation']['kfac_pairs'][0]:.2f}, {r['activation']['kfac_pairs'][-1]:.2f}"),
    ("activation ratio, SVD top-10 % / bottom-50 %",
     lambda r: "–" if not r["activation"] else
     f"{r['activation']['svd'][0]:.2f}, {r['activation']['svd'][-1]:.2f}"),
    ("activation gap (bottom-50 % − top-10 %)",
     lambda r: _num((r["activation"] or {}).get("gap"), "{:+.2f}")),
    ("top edit (L1+2 ρ 0.7): forget-validation recited, perplexity rise",
     _recited_and_rise("forget_validation", "reference")),
    ("complement control: forget-validation recited, perplexity rise",
     _recited_and_rise("forget_validation", "complement")),
    ("random-mass control: forget-validation recited",
     lambda r: _pct(_shown_edit(r, "random_mass").get("forget_validation"))),
    ("selected K-FAC edit", lambda r: _shown_edit(r, "selected", "kfac").get("name") or "–"),
    ("selected K-FAC: quotes recited, perplexity rise",
     _recited_and_rise("untargeted", "selected", "kfac")),
    ("selected K-FAC: closed-book, open-book, arithmetic, logic kept",
     lambda r: ", ".join(_num(_shown_edit(r, "selected", "kfac").get(c)) for c in TASK_CATEGORIES)),
    ("selected BSN: quotes recited",
     lambda r: _pct(_shown_edit(r, "selected", "bsn").get("untargeted"))),
]


def table(result: dict) -> str:
    """The comparison as Markdown: one column per weight decay and seed, then H.1's predictions."""
    cols = [(wd, seed) for wd in map(str, result["weight_decays"]) for seed in result["seeds"][wd]]
    runs = result["runs"]
    lines = ["| weight decay, seed | " + " | ".join(f"{wd}, seed {s}" for wd, s in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for label, fn in ROWS:
        lines.append(f"| {label} | " + " | ".join(fn(runs[wd][str(s)]) for wd, s in cols) + " |")
    decayed = [(wd, s) for wd, s in cols if wd in result["verdicts"]]
    marks = {None: "untestable", True: "yes", False: "no"}
    lines += ["", "| H.1's prediction (against weight decay 0, same seed) | "
              + " | ".join(f"{wd}, seed {s}" for wd, s in decayed) + " | holds |",
              "|---|" + "---|" * (len(decayed) + 1)]
    for p, text in result["predictions"].items():
        c = result["counts"][p]
        lines.append(f"| {text} | " + " | ".join(marks[result["verdicts"][wd][str(s)][p]]
                                                 for wd, s in decayed)
                     + f" | {c['holds']} of {c['tested']} |")
    return "\n".join(lines) + "\n"


def load_decay_dir(directory, load) -> dict[int, dict]:
    """{seed: load(run)} of one weight decay's directory: its `seed-N/` runs (a study with
    `seeds`), or the directory itself as seed 0 (a single run)."""
    from pathlib import Path

    root = Path(directory)
    seeds = {int(d.name[5:]): d for d in sorted(root.glob("seed-*"))
             if d.name[5:].isdecimal() and (d / "lm_summary.json").is_file()}
    if seeds:
        return {seed: load(d) for seed, d in sorted(seeds.items())}
    return {0: load(root)}
