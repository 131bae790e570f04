"""The planner's factor sets and edits: content keys, collection and edit flags."""

from __future__ import annotations

import json

from curvmem.plan.common import PlanError, digest, flags
from curvmem.plan.config import check_name
from curvmem.plan.sweeps import method_tag, sweep_specs


class EditPlan:
    """Part of `Plan`: the factor sets the K-FAC edits read, and every edit of the sweeps."""

    # ------------------------------------------------------------------- factor sets

    def factor_config(self, domain, fset):
        """The settings of factor set `fset`: main, control (`control_factors` over the main
        ones) or a key of `factor_variants`."""
        f = dict(self.config[domain]["factors"])
        if fset == "control":
            f.update(self.config[domain].get("control_factors") or {})
        elif fset != "main":
            variants = self.config[domain].get("factor_variants") or {}
            if fset not in variants:
                raise PlanError(f"config {domain}: a sweep names factors '{fset}', which is not "
                                f"main, control or a key of {domain}.factor_variants "
                                f"({sorted(variants)})")
            f.update(variants[fset])
        if f.get("slice") and f.get("shards", 1) > 1:
            raise PlanError(f"config {domain} factors '{fset}': slice and shards > 1 do not mix")
        return f

    def factor_key(self, domain, fset):
        return f"{fset}-" + digest({"model": self.model_key(domain),
                                    "factors": self.factor_config(domain, fset)})

    def _factor_sets(self, domain):
        """{fkey: {"fset": name, "layers": [...], "shards": n}} for the sets kfac edits use."""
        sets = {}
        for spec in self.edits[domain].values():
            if spec["method"] != "kfac":
                continue
            fs = sets.setdefault(spec["fkey"], {"fset": spec["factors"], "layers": set()})
            fs["layers"].update(spec["layers"])
            known = self.factor_config(domain, spec["factors"])["modules"]
            extra = sorted(set(spec["modules"]) - set(known))
            if extra:
                raise PlanError(f"config {domain}.edits.{spec['name']}: modules {extra} are not "
                                f"in {domain}.factors.modules {known}; add them there")
        for fs in sets.values():
            fs["layers"] = sorted(fs["layers"])
            fs["shards"] = self.factor_config(domain, fs["fset"])["shards"]
        return sets

    def fkeys(self, sharded):
        return [k for d in self.domains for k, fs in self.factor_sets[d].items()
                if (fs["shards"] > 1) == sharded]

    def collect_flags(self, domain, fkey):
        f = self.factor_config(domain, self.factor_sets[domain][fkey]["fset"])
        n_slices = int(f["slice"].split("/")[1]) if f.get("slice") else 1
        return flags(("--modules", f["modules"]), ("--tokens", n_slices * f["tokens"]),
                     ("--shard", f.get("slice")),
                     ("--memorized", self.memorized_inputs(domain) or None),
                     ("--seq-len", f.get("seq_len") if domain == "lm" else None),
                     ("--batch-size", f["batch_size"]), ("--fisher", f["fisher"]),
                     ("--seed", f["seed"]), ("--dtype", f["dtype"]),
                     ("--checkpoint-every", f["checkpoint_every"] or None))

    def shard_files(self, domain, fkey, layer):
        n = self.factor_sets[domain][fkey]["shards"]
        return [self.paths.shard_file(domain, fkey, k, n, layer)
                for k in range(n)]  # curvmem counts shards from 0

    def layer_files(self, domain, kind, fkey):
        """{layer: file} of one factor set; kind is `factors` or `eigen`."""
        return {layer: self.paths.layer_file(kind, domain, fkey, layer)
                for layer in self.factor_sets[domain][fkey]["layers"]}

    # ------------------------------------------------------------------- edits

    def expand_edits(self, domain):
        """{key: spec} for every edit the config's sweeps ask for; spec["label"] names it."""
        edits, labels = {}, set()
        for name, sweep in self.config[domain]["edits"].items():
            for label, spec in sweep_specs(domain, name, sweep):
                check_name(f"{domain}.edits.{name} (label {label})", label)
                if label in labels:
                    raise PlanError(f"config {domain}.edits: two edits are both named {label}")
                labels.add(label)
                fkey = (self.factor_key(domain, spec["factors"]) if spec["method"] == "kfac"
                        else None)
                key = f"{label}-{digest({'spec': spec, 'factors': fkey, 'model': self.model_key(domain)})}"
                edits[key] = {**spec, "label": label, "fkey": fkey}
        return edits

    def edit_path(self, domain, key):
        return self.paths.edit(domain, key, self.edits[domain][key]["method"])

    def edit_keys(self, domain, methods):
        return [k for k, s in self.edits[domain].items() if s["method"] in methods]

    def edit_inputs(self, domain, key):
        spec = self.edits[domain][key]
        files = self.model_input(domain)
        if spec["method"] == "kfac":
            files += [self.paths.layer_file("eigen", domain, spec["fkey"], layer)
                      for layer in spec["layers"]]
        return files

    def edit_flags(self, domain, key):
        spec = self.edits[domain][key]
        value = spec.get("rho", spec.get("svd_drop"))
        per_module = None  # a value per module goes through --spec {layer: {module: value}}
        if isinstance(value, dict):
            per_module = json.dumps({str(layer): value for layer in spec["layers"]})
            value = None
        eigen = self.paths.layer_dir("eigen", domain, spec["fkey"]) if spec["fkey"] else None
        kfac = spec["method"] == "kfac"
        return flags(("--model", self.model_arg(domain)), ("--eigen", eigen),
                     ("--method", spec["method"]), ("--layers", spec["layers"]),
                     ("--modules", spec["modules"]), ("--spec", per_module),
                     ("--rho" if kfac else "--svd-drop", value),
                     ("--keep", spec.get("keep")), ("--seed", spec.get("seed")),
                     ("--dtype", self.model_config(domain).get("dtype")),
                     ("--tag", method_tag(spec)))

    def bsn_flags(self, key):
        spec = self.edits["lm"][key]
        return flags(("--ratio", spec["ratio"]), ("--alpha", spec.get("alpha")),
                     ("--epochs", spec.get("epochs")), ("--lr", spec.get("lr")),
                     ("--seed", spec.get("seed")), ("--seq-len", spec.get("seq_len")),
                     ("--batch-size", spec.get("batch_size")))
