"""Where every artifact of a run lies under its outdir: each path template is written here once.

The planner fills in content keys; the rules (workflow/rules/*.smk) call the same methods with
the wildcards left in. Every argument a rule leaves out defaults to its Snakemake wildcard, so
`Layout(out).layer_file("eigen")` is the eigen rule's output, `{out}/{domain}/eigen/{fkey}/
layer_{layer}.nc`, and `layer_file("eigen", "lm", fkey, 2)` one file of it.
tests/test_rules_layout.py fails on a rule that spells a path itself.

    {domain}/models/{model_key}/...           embedded world, tokenizer, model (lm), data + model (vit)
    {domain}/factors/{fkey}/layer_L.nc        K-FAC factors of one factor set (sharded: shard-k-of-n/)
    {domain}/eigen/{fkey}/layer_L.nc          their eigendecomposition
    {domain}/edits/{key}.safetensors|.json    one edit (K-FAC or SVD);  lm/bsn/{key}.* for BalancedSubnet
    {domain}/eval/{key}/{evaluation}.json     one evaluation of the base model (key base-...) or an edit
    lm/data/, hub/                            public data and hub snapshots, fetched once
    lm/export/, lm/harness/                   edits as checkpoints, lm-evaluation-harness results
    analysis/, {domain}/analysis/stability/   the analyses' JSONs and figures, the stability slices
    vit_study/                                the ViT study's data, models, cells and experiments
    lm_summary.json, vit_summary.json, compare.*, readme_tables.md, report.html
    index.json                                human labels -> the paths above (committed to git)
    logs/, benchmarks/                        each job's log and Snakemake benchmark, by job name
"""

from __future__ import annotations

import glob
import os
import re

LAYER_STEM = "layer_{layer}"  # one layer's factor or eigen file, `layer_L.nc` (schema.layer_file)
LAYER_FILE = f"{LAYER_STEM}.nc"
SHARD_DIR = "shard-{k}-of-{n}"  # shard k of n of a factor set (curvmem counts from 0)
FETCHED_SUFFIX = {"tokens": ".npy", "texts": ".jsonl"}  # Layout.fetched
WORLD_MANIFEST = "world.json"  # beside the embedded world's data files
VIT_EVALUATION = "vit"  # the one evaluation of a ViT or its edit: {domain}/eval/{key}/vit.json
INDEX_MARK = re.compile(r"[0-9a-f]{16}\.written")  # a stale index's mark (index_mark)


def layer_file_name(layer="{layer}") -> str:
    """`layer_L.nc`, the file of layer L in a factor or eigen directory.

    Args:
        layer: the layer's index (default: the `{layer}` wildcard).

    Returns:
        The file name.
    """
    return LAYER_FILE.format(layer=layer)


def sidecar_of(edit_path: str) -> str:
    """An edit's JSON sidecar, beside its .safetensors file.

    Args:
        edit_path: the edit's `.safetensors` path.

    Returns:
        The sidecar's path.
    """
    return edit_path.removesuffix(".safetensors") + ".json"


def seed_outdir(root: str, seed) -> str:
    """The outdir of one run of a multi-seed study whose config names `root`.

    Args:
        root: the config's `outdir`.
        seed: the run's seed.

    Returns:
        `{root}/seed-{seed}`.
    """
    return f"{root.rstrip('/')}/seed-{seed}"


def seeds_outputs(root: str) -> dict[str, str]:
    """What `curvmem report-seeds` writes across the seeds of a study whose config names `root`.

    Args:
        root: the config's `outdir`.

    Returns:
        {"summary": ..., "tables": ..., "figure": ...} under `{root}/seeds/`.
    """
    seeds = f"{root.rstrip('/')}/seeds"
    return {"summary": f"{seeds}/seeds_summary.json", "tables": f"{seeds}/readme_tables.md",
            "figure": f"{seeds}/fronts.png"}


class Layout:
    """Every path under one run's outdir (`out`), artifacts, logs and benchmarks alike."""

    def __init__(self, out: str):
        self.out = out

    # ------------------------------------------------------------------- models and data

    def model_dir(self, domain, model_key):
        """Where an embedded model (and its world or data) is built."""
        return f"{self.out}/{domain}/models/{model_key}"

    @staticmethod
    def trained_model(model_dir):
        return f"{model_dir}/model"

    @staticmethod
    def world_dir(model_dir):
        return f"{model_dir}/world"

    def world_file(self, model_dir, name):
        return f"{self.world_dir(model_dir)}/{name}"

    @staticmethod
    def tokenizer(model_dir):
        return f"{model_dir}/tokenizer"

    @staticmethod
    def vision_data(model_dir):
        return f"{model_dir}/data.safetensors"

    def snapshot(self, name="{snapshot}"):
        """A hub model downloaded once (`name`: `snapshot_name`)."""
        return f"{self.out}/hub/{name}"

    @staticmethod
    def snapshot_name(repo_slug, revision_slug):
        return f"{repo_slug}@{revision_slug}"

    def fetched(self, stem="{fetched}", kind="url"):
        """An lm.data entry a local rule fetches: `stem` is the entry's name and content key (for
        a released file, `url`, with the file's own suffix); a pre-tokenized corpus (`tokens`)
        is a .npy file, a hub dataset's texts (`texts`) JSONL."""
        return f"{self.out}/lm/data/{stem}{FETCHED_SUFFIX.get(kind, '')}"

    # ------------------------------------------------------------------- factors, eigenbases

    def layer_dir(self, kind, domain="{domain}", fkey="{fkey}"):
        """One factor set's directory; `kind` is `factors` or `eigen`."""
        return f"{self.out}/{domain}/{kind}/{fkey}"

    def layer_file(self, kind, domain="{domain}", fkey="{fkey}", layer="{layer}"):
        return f"{self.layer_dir(kind, domain, fkey)}/{layer_file_name(layer)}"

    def shard_file(self, domain="{domain}", fkey="{fkey}", k="{k}", n="{n}", layer="{layer}"):
        return (f"{self.layer_dir('factors', domain, fkey)}/{SHARD_DIR.format(k=k, n=n)}/"
                f"{layer_file_name(layer)}")

    # ------------------------------------------------------------------- edits, evaluations

    def edit(self, domain="{domain}", key="{key}", method=None):
        """An edit's weights; BalancedSubnet's (`method` bsn) lie apart, under bsn/."""
        return f"{self.out}/{domain}/{'bsn' if method == 'bsn' else 'edits'}/{key}.safetensors"

    def edit_sidecar(self, domain="{domain}", key="{key}", method=None):
        return sidecar_of(self.edit(domain, key, method))

    def eval_dir(self, domain, key="{key}"):
        """The evaluations of the base model (key base-...) or of one edit."""
        return f"{self.out}/{domain}/eval/{key}"

    def eval_file(self, domain, name, key="{key}"):
        return f"{self.eval_dir(domain, key)}/{name}.json"

    def export_dir(self, key="{key}"):
        """Base + edit `key` as a Hugging Face checkpoint (curvmem export)."""
        return f"{self.out}/lm/export/{key}"

    def harness_tasks_dir(self, key):
        return f"{self.out}/lm/harness/tasks-{key}"

    def harness_result(self, key="{key}"):
        return f"{self.out}/lm/harness/{key}.json"

    # ------------------------------------------------------------------- analyses

    def analysis_dir(self):
        return f"{self.out}/analysis"

    def analysis_outputs(self, name):
        """{"json": ..., "figure": ...} of one analysis."""
        return {"json": f"{self.analysis_dir()}/{name}.json",
                "figure": f"{self.analysis_dir()}/{name}.png"}

    def stability_eigen_dir(self, domain, slice_name):
        return f"{self.out}/{domain}/analysis/stability/{slice_name}/eigen"

    def stability_eigen_file(self, domain, slice_name, layer):
        return f"{self.stability_eigen_dir(domain, slice_name)}/{layer_file_name(layer)}"

    # ------------------------------------------------------------------- the ViT study

    def study_dir(self):
        return f"{self.out}/vit_study"

    def study_data(self, name="main"):
        """The study's dataset `main`, or another of its `datasets`."""
        if name == "main":
            return f"{self.study_dir()}/data.safetensors"
        return f"{self.study_dir()}/data-{name}.safetensors"

    def study_model(self, key="{study_model}"):
        return f"{self.study_dir()}/models/{key}"

    def study_cell(self, key="{study_model}"):
        return f"{self.study_dir()}/cells/{key}.json"

    def study_experiment(self, experiment="{study_experiment}", key="{study_model}"):
        return f"{self.study_dir()}/experiments/{experiment}/{key}.json"

    def study_report(self, name):
        """{"summary", "table", "figure"} of the study's report (`name`: vit_study, vit_decide)."""
        return {"summary": f"{self.out}/{name}.json", "table": f"{self.out}/{name}.md",
                "figure": f"{self.out}/{name}.png"}

    # ------------------------------------------------------------------- summaries, report

    def lm_report(self):
        """What `curvmem report-lm` writes."""
        return {"summary": f"{self.out}/lm_summary.json", "table": f"{self.out}/lm_table.md",
                "figure": f"{self.out}/lm_figure.png", "sweep": f"{self.out}/lm_sweep.png"}

    def compare(self):
        """What `curvmem compare` writes."""
        return {"figure": f"{self.out}/compare.png", "table": f"{self.out}/compare.md"}

    def vit_report(self):
        """What `curvmem report-vit` writes."""
        return {"summary": f"{self.out}/vit_summary.json", "table": f"{self.out}/vit_table.md",
                "figure": f"{self.out}/vit_figure.png"}

    def readme_tables(self):
        return f"{self.out}/readme_tables.md"

    def report_html(self):
        return f"{self.out}/report.html"

    def index_file(self):
        return f"{self.out}/index.json"

    def index_marks_dir(self):
        return f"{self.out}/logs/index"

    def index_mark(self, index_digest):
        """The mark of a stale index: an output of the `index` rule named by the new text."""
        return f"{self.index_marks_dir()}/{index_digest}.written"

    def index_marks_glob(self):
        """A glob pattern of every file `index_mark` may have named (`is_index_mark` tells)."""
        return f"{glob.escape(self.index_marks_dir())}/*.written"

    @staticmethod
    def is_index_mark(path) -> bool:
        """Whether a file of `index_marks_dir` is a mark `index_mark` names."""
        return bool(INDEX_MARK.fullmatch(os.path.basename(path)))

    # ------------------------------------------------------------------- logs, benchmarks

    def log(self, job):
        """A job's log; `job` names it (e.g. `lm/evaluate/{key}`), one name per job."""
        return f"{self.out}/logs/{job}.log"

    def benchmark(self, job):
        """Snakemake's wall time and memory of a job (docs/workflow.md)."""
        return f"{self.out}/benchmarks/{job}.tsv"

    @staticmethod
    def layer_job(step, domain="{domain}", fkey="{fkey}", layer="{layer}", sharded=False):
        """The name of a per-layer job: `{domain}/{step}/{fkey}/[shard-k-of-n/]layer_L`."""
        shard = f"{SHARD_DIR}/" if sharded else ""
        return f"{domain}/{step}/{fkey}/{shard}{LAYER_STEM.format(layer=layer)}"
