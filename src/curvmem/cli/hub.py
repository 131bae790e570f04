"""CLI: download (a hub model snapshot, once, for offline jobs)."""

from __future__ import annotations

import argparse
import json


def run_download(args) -> None:
    from curvmem.model.hub import download_snapshot

    note = download_snapshot(args.model, args.out, args.revision, cache_dir=args.cache_dir,
                             copy=args.copy)
    print(json.dumps({"out": args.out, **{k: v for k, v in note.items() if k != "files"},
                      "n_files": len(note["files"])}))


def register(sub, evaluate_sub) -> None:
    p = sub.add_parser(
        "download", help="download a hub model snapshot into a local directory (once)",
        description="huggingface_hub.snapshot_download of MODEL at REVISION into the hub cache "
        "(HF_HOME, or --cache-dir; offline from that cache with HF_HUB_OFFLINE=1), its files "
        "linked into --out (hard links, else symbolic; --copy copies) with "
        "curvmem_download.json (repo, revision, resolved commit). Jobs then load --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="hub id, e.g. allenai/OLMo-2-0425-1B")
    p.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    p.add_argument("--cache-dir", default=None, help="hub cache (default: HF_HOME's)")
    p.add_argument("--copy", action="store_true",
                   help="copy the files instead of linking them (a cache compute nodes cannot see)")
    p.add_argument("--out", required=True, help="directory to create")
    p.set_defaults(func=run_download)
