"""CLI: download (a hub model snapshot), tokenize (a streamed corpus -> .npy), fetch (a released
data file by URL and sha256, or a streamed dataset's texts as JSONL): public sources fetched once,
on a machine with the network, so that compute jobs never need it."""

from __future__ import annotations

import argparse
import json
import sys

from curvmem.cli.common import add_model_args


def run_download(args) -> None:
    from curvmem.model.hub import download_snapshot

    note = download_snapshot(args.model, args.out, args.revision, cache_dir=args.cache_dir,
                             copy=args.copy)
    print(json.dumps({"out": args.out, **{k: v for k, v in note.items() if k != "files"},
                      "n_files": len(note["files"])}))


def run_tokenize(args) -> None:
    from curvmem.model.load import load_tokenizer
    from curvmem.world.corpus import write_token_stream

    tok = load_tokenizer(args.model, args.trust_remote_code)
    note = write_token_stream(args.data, tok, args.tokens, args.out)
    if note["short"]:
        print(f"warning: {args.data} ended after {note['tokens']} of the {args.tokens} tokens "
              "asked for", file=sys.stderr)
    print(json.dumps({"out": args.out, **note}))


def run_fetch(args) -> None:
    if (args.url is None) == (args.data is None):
        raise ValueError("give either --url (with --sha256) or --data hf:...")
    if args.url is not None:
        from curvmem.world.sources import fetch_url

        if not args.sha256:
            raise ValueError("--url needs --sha256: a released file is checked, never trusted")
        print(json.dumps(fetch_url(args.url, args.sha256, args.out)))
        return
    from curvmem.world.corpus import write_texts

    if not str(args.data).startswith("hf:"):
        raise ValueError(f"--data must be hf:NAME[/CONFIG][:SPLIT][@REVISION][#FIELD], got "
                         f"{args.data}")
    print(json.dumps({"out": args.out, "rows": write_texts(args.data, args.out, args.rows)}))


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
    p.add_argument("--out", required=True,
                   help="directory to create (an existing one must be empty)")
    p.set_defaults(func=run_download)

    p = sub.add_parser(
        "tokenize", help="pre-tokenize a corpus (e.g. streamed from the hub) into a .npy stream",
        description="The first --tokens tokens of the corpus's EOS-joined token stream (the "
        "model's tokenizer) as a 1-D .npy; reading stops there. `curvmem collect --data F.npy` "
        "packs it exactly as it would pack the text, and reads only its --shard's rows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_model_args(p)
    p.add_argument("--data", required=True,
                   help="hf:NAME[/CONFIG][:SPLIT][@REVISION][#FIELD], JSONL, text or a datasets "
                   "directory")
    p.add_argument("--tokens", type=int, required=True, help="tokens to keep")
    p.add_argument("--out", required=True, help="FILE.npy")
    p.set_defaults(func=run_tokenize)

    p = sub.add_parser(
        "fetch", help="fetch a released data file (URL + sha256) or a dataset's texts (JSONL)",
        description="--url U --sha256 H: download U (https://, file://) and keep it only if its "
        "sha256 is H. --data hf:...: the texts of a streamed dataset as JSONL {\"text\"}, at "
        "most --rows.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default=None)
    p.add_argument("--sha256", default=None, help="expected sha256 of the file (hex)")
    p.add_argument("--data", default=None, help="hf:NAME[/CONFIG][:SPLIT][@REVISION][#FIELD]")
    p.add_argument("--rows", type=int, default=None, help="--data: at most this many rows")
    p.add_argument("--out", required=True, help="file to write")
    p.set_defaults(func=run_fetch)
