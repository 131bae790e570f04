"""Glue between the config and the rules. The planning itself (content keys, sweep expansion,
checks beyond the schema, flags) is `curvmem.plan` (torch-free, unit-tested), and every path is
its layout's (`PATHS`, curvmem.plan.layout: no rule spells one, tests/test_rules_layout.py);
this file only adapts it to Snakemake: wildcards -> plan methods, PlanError -> WorkflowError,
resources, and what the plan leaves to its caller (the environment, reading the index)."""

import glob

from snakemake.exceptions import WorkflowError

from curvmem.io import atomic_output
from curvmem.plan import MADE_WITH_EVALUATION, Plan, PlanError, digest, flags, one_of

try:
    PLAN = Plan(config, configfiles=workflow.configfiles)
except PlanError as e:
    raise WorkflowError(str(e)) from None

PATHS = PLAN.paths
SNAPSHOTS = PLAN.snapshots()
# the hub off for every job; the download rules run with the user's own setting (hub.smk)
_HUB_ENVIRONMENT, USER_HUB_OFFLINE = PLAN.hub_environment(os.environ)
os.environ.update(_HUB_ENVIRONMENT)
DOMAINS = PLAN.domains
BASE = PLAN.base


def planned(method):
    """A plan method whose PlanError becomes a WorkflowError (a config problem, one line)."""

    def call(*args):
        try:
            return method(*args)
        except PlanError as e:
            raise WorkflowError(str(e)) from None

    return call


# A path param is a function of the wildcards only (lambda wc: ...), never derived from input or
# output (lambda wc, output: ...): Snakemake records the value of the former for its params rerun
# trigger, not of the latter, so changing one kind into the other reruns a finished DAG.
embedded = PLAN.embedded
model_arg = planned(PLAN.model_arg)
model_input = planned(PLAN.model_input)
model_flags = PLAN.model_flags
lm_data = planned(PLAN.lm_data)
vit_data = planned(PLAN.vit_data)
edit_keys = PLAN.edit_keys
edit_path = PLAN.edit_path
report_entries = PLAN.report_entries
summaries = PLAN.summaries
final_targets = planned(PLAN.final_targets)
fkeys = PLAN.fkeys


# --------------------------------------------------------------------------- input and params
# functions of a job's wildcards


FETCHED = {kind: PLAN.fetched_data(kind) for kind in ("tokens", "texts", "url")}


def fetched_stems(kind):
    """File names, without the suffix, of the fetched data of this kind (hub.smk wildcards)."""
    return [os.path.splitext(os.path.basename(p))[0] for p in FETCHED[kind]]


def snapshot_flags(snapshot_dir):
    repo, revision = SNAPSHOTS[snapshot_dir]
    return flags(("--model", repo), ("--revision", revision))


def domain_data(wc):
    return planned(PLAN.domain_data)(wc.domain)


def domain_model_input(wc):
    return model_input(wc.domain)


def domain_model_arg(wc):
    return model_arg(wc.domain)


def collect_flags(wc):
    return PLAN.collect_flags(wc.domain, wc.fkey)


def shard_files(wc):
    return PLAN.shard_files(wc.domain, wc.fkey, wc.layer)


def edit_flags(domain):
    """`curvmem edit`'s flags for the job's edit ({key}) of `domain`."""
    return lambda wc: planned(PLAN.edit_flags)(domain, wc.key)


def bsn_flags(wc):
    return PLAN.bsn_flags(wc.key)


def lm_eval_inputs(wc):
    return planned(PLAN.lm_eval_inputs)(wc.key)


def lm_eval_runs(wc):
    return planned(PLAN.lm_eval_runs)(wc.key)


def vit_eval_inputs(wc):
    return planned(PLAN.vit_eval_inputs)(wc.key)


def edit_flag(domain):
    return lambda wc: PLAN.edit_flag(domain, wc.key)


# --------------------------------------------------------------------------- resources, logs


class JobResources(dict):
    """A rule's cluster resources (`resources: **r`) and its threads (`threads: r.threads`)."""

    def __init__(self, resources, threads):
        super().__init__(resources)
        self.threads = threads


def resources_of(rule, domain=None):
    """The `resources:` keywords and the `threads:` of a rule (or of a tuple of rules run in one
    job), both with the config's per-domain override; `domain` may be a wildcard name
    ("{domain}"), and then each is a function of the job's wildcards."""

    def res(domain):
        if isinstance(rule, tuple):
            return PLAN.res_together(rule, domain)
        return PLAN.res(rule, domain)

    def pick(key):
        if domain == "{domain}":
            return lambda wildcards: res(wildcards.domain)[key]
        return res(domain)[key]

    return JobResources({key: pick(key) for key in ("mem_mb", "runtime", "gpu")},
                        threads=pick("threads"))


def same_config_args():
    """The nested `snakemake --report` must see the same config as this run."""
    # relative paths: an absolute one would make the report stale in every other checkout
    files = [os.path.relpath(f) for f in workflow.config_settings.configfiles]
    overrides = workflow.config_settings.config_args if workflow.config_settings.config else []
    return flags(("--configfile", *files), ("--config", *overrides))


def index_on_disk():
    """The outdir's index.json as it is now, or None (missing, unreadable)."""
    try:
        with open(PLAN.index_file()) as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def outdir_owned(wildcards=None):
    """A named input (always empty) of every rule that writes a file without a content key
    (summaries, tables, figures, analyses, report, index): building such a job into the DAG
    fails, before anything runs, when the outdir's index names another config
    (Plan.owner_problem). A run of content-keyed targets only may share the outdir."""
    problem = PLAN.owner_problem(index_on_disk())
    if problem:
        raise WorkflowError(problem)
    return []


def index_marks():
    """[the mark of a stale index], or []: PATHS.index_mark(<digest of the plan's index>), an
    output of the `index` rule that `all` asks for (Snakemake reruns a job for a missing output
    only where a target or a dependent job asks for that output). A missing index needs no
    mark: it is a missing output itself."""
    stale = os.path.exists(PLAN.index_file()) and PLAN.index_stale(index_on_disk())
    return [PATHS.index_mark(digest(PLAN.index_text(), 16))] if stale else []


def write_index(path, marks, log):
    """The `index` rule's work (share.smk): the plan's index, written atomically; then the mark
    (`marks`: empty or one path), and the marks of earlier plans go, so that a plan changed
    back to an earlier text finds its mark missing. Only marks this rule made are removed."""
    with atomic_output(path) as tmp:
        tmp.write_text(PLAN.index_text())
    for mark in marks:
        for old in glob.glob(PATHS.index_marks_glob()):
            if PATHS.is_index_mark(old) and old != mark:
                os.remove(old)
        open(mark, "w").close()
    with open(log, "w") as f:
        f.write(f"{path}: {sum(map(len, PLAN.artifacts().values()))} artifacts\n")
