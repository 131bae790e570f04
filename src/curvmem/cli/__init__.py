"""The `curvmem` command line. Each command group lives in its own file and registers itself.

    core       collect, merge, eigen, edit                      (curvature core)
    lm         world, tokenizer, train-lm, evaluate {memorization,perplexity,tasks,coherence},
               report-lm                                        (embedded default, LM evaluations)
    vision     vision-data, train-vit, evaluate vit, report-vit (ViT on noisy digits)
    baselines  baseline {bsn}, compare                          (BalancedSubnet, SVD, controls)
    mine       mine                                             (memorized windows of a corpus)
    export     export                                           (base + edit -> HF checkpoint)
    hub        download, tokenize, fetch                        (public sources, once, for offline jobs)
    harness    harness, harness-tasks                           (lm-evaluation-harness, [eval] extra)
    analyze    analyze {activation-ratio,task-interaction,spectra,per-example,stability,stress}
                                                                (mechanism analyses)

`curvmem A ... --then B ...` runs several commands in one process (start-up paid once).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import sys
from contextlib import ExitStack

from curvmem import __version__, schema
from curvmem.cli import analyze, baselines, core, export, harness, hub, lm, mine, vision
from curvmem.cli.common import check_seed
from curvmem.io import begin_command, check_new_dir, check_output, exclusive, startup_split

# commands whose --out is a directory (every other --out, --table, --figure, ... is a file)
OUT_DIRS = {"collect", "world", "tokenizer", "train-lm", "train-vit", "export", "download",
            "harness-tasks"}
# ... of which these make the directory whole: an existing --out is refused unless it is empty
# (collect writes one file per layer into a directory other layers' jobs write too)
NEW_DIRS = OUT_DIRS - {"collect"}
# output flags besides --out (attribute, flag)
OTHER_OUTPUTS = (("table", "--table"), ("figure", "--figure"), ("sweep_figure", "--sweep-figure"),
                 ("validation_out", "--validation-out"), ("tables", "--tables"))

# integer options that count something: 0 or less is a mistake, named by its flag
POSITIVE = ("batch_size", "tokens", "seq_len", "threads", "epochs", "block_len", "max_tokens",
            "prefix_len", "suffix_len", "t", "steps", "vocab_size", "max_rows", "stride")


def check_counts(args) -> None:
    for name in POSITIVE:
        value = getattr(args, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    seed = getattr(args, "seed", None)
    if isinstance(seed, int):
        check_seed(seed, "--seed")


def outputs(args) -> list[tuple[str, str, bool]]:
    """(path, flag, is_dir) of every output a parsed command will write."""
    found = []
    if getattr(args, "out", None):
        found.append((args.out, "--out", args.command in OUT_DIRS))
    for attr, flag in OTHER_OUTPUTS:
        if getattr(args, attr, None):
            found.append((getattr(args, attr), flag, False))
    if args.command == "evaluate":
        for run in getattr(args, "run", None) or ():  # evaluate batch: --run KIND DATA OUT
            found.append((run[2], "--run ... OUT", False))
    elif args.command == "analyze" and args.analysis == "batch":  # --run 'ANALYSIS ARGS...'
        for run in analyze.batch_runs(args):
            found += [(path, f"--run ... {flag}", False) for path, flag, _ in outputs(run)]
    return found


def locked_paths(args, targets) -> list[tuple[str, str]]:
    """(path, flag) of each output to lock. `collect` writes one file per layer into a directory
    that other layers' jobs write too (the workflow collects each layer in its own job, side by
    side): it locks its layers' files, not the directory."""
    paths = []
    for path, flag, _ in targets:
        if args.command == "collect" and flag == "--out":
            from curvmem.cli.core import _layer_list

            paths += [(str(schema.layer_path(path, layer)), flag)
                      for layer in _layer_list(args.layers)]
        else:
            paths.append((path, flag))
    return paths


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="curvmem",
        description="Find and remove memorization in transformers through K-FAC loss curvature. "
        "Typical path: collect -> eigen -> edit -> evaluate. Run `curvmem COMMAND --help`.",
    )
    parser.add_argument("--version", action="version", version=f"curvmem {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    evaluate = sub.add_parser("evaluate", help="evaluate a model, optionally with an edit applied",
                              description="Evaluations write one JSON file each.")
    evaluate_sub = evaluate.add_subparsers(dest="evaluation", metavar="EVALUATION", required=True)
    for group in (core, lm, vision, baselines, mine, export, hub, harness):
        group.register(sub, evaluate_sub)
    analyze.register(sub)
    return parser


def _cleanup_note(unraisable) -> None:
    """Errors in finalizers (h5py closing a file the disk had no room for) after the command's own
    error: one line, not a traceback."""
    print(f"curvmem: note: during cleanup: {unraisable.exc_value}".splitlines()[0],
          file=sys.stderr)


THEN = "--then"  # `curvmem A ... --then B ...`: several commands, one process (see main)


def split_chain(parser, argv: list[str]) -> list[list[str]]:
    """`A ... --then B ...` -> [[A ...], [B ...]]; a command with no words is a usage error."""
    parts, current = [], []
    for word in argv:
        if word == THEN:
            parts.append(current)
            current = []
        else:
            current.append(word)
    parts.append(current)
    if len(parts) > 1 and not all(parts):
        parser.error(f"{THEN} joins two commands: `curvmem A ... {THEN} B ...`")  # exits 2
    return parts


def written_files(args, targets, locked, existed: set[str]) -> list[str]:
    """The files a finished command wrote for `targets`, to remove again when a later command of
    the same chain fails: each output file with its checksum and cost file (and an edit's JSON
    sidecar); an output directory (and its cost file) only if the chain created it, else only
    the files the command locked in it (collect's layer files: other jobs write the same
    directory)."""
    from curvmem.io import checksum_path, cost_path
    from curvmem.schema import edit_sidecar

    files, dirs = [], {path for path, _, is_dir in targets if is_dir}
    for path, _ in locked:
        if path in dirs:
            if path not in existed:
                files += [path, str(cost_path(path))]  # a directory this chain made, all in it
            elif args.command in NEW_DIRS and os.path.isdir(path):
                # it was there empty (else refused): all in it is the command's; it stays
                files += [os.path.join(path, name) for name in os.listdir(path)]
                files.append(str(cost_path(path)))
            continue
        files += [path, str(checksum_path(path)), str(cost_path(path))]
        if path.endswith(".safetensors") and args.command in ("edit", "baseline"):
            files.append(str(edit_sidecar(path)))
    return files


def remove_written(files: list[str]) -> None:
    """Remove what a failed chain wrote; a file that cannot be removed is named, not raised (the
    command's own error is the one to report)."""
    import shutil

    for path in files:
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.unlink(path)
        except OSError as e:
            print(f"curvmem: note: could not remove {path} ({e.strerror})", file=sys.stderr)


def _run_chain(planned, existed: set[str], running: list) -> None:
    """Lock every output, then run each command; when one fails, remove what the earlier ones
    wrote while the locks are still held (no other process can have written there)."""
    done = []
    with ExitStack() as locks:
        for _, _, locked in planned:
            for path, flag in locked:
                locks.enter_context(exclusive(path, flag))
        try:
            for args, targets, locked in planned:
                if running:  # the last command's model is unreachable now: free it first
                    gc.collect()
                running.append(args)
                args.func(args)
                done += written_files(args, targets, locked, existed)
        except BaseException:
            remove_written(done)
            raise


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that it unwinds like an error: temporary files and
    locks go, a `--then` chain removes what it wrote. A BaseException, so that no `except
    Exception` on the way swallows it."""


# exit status of a command stopped by a signal: 128 + its number, as a shell reports it
SIGNAL_EXIT = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}


def _on_sigterm(signum, frame) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the cleanup short
    raise Terminated


_NOT_SET = object()  # where no handler can be set: a thread other than the main one


def _catch_sigterm():
    """Install the SIGTERM handler; returns the previous one (to put back: a handler set outside
    Python reads as None, put back as the default)."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:
        return _NOT_SET
    return signal.SIG_DFL if previous is None else previous


def main(argv=None) -> int:
    """Run one command, or several joined by `--then` in one process: Python, torch and
    transformers are imported once (seconds of start-up on 2 cores against a fraction of a second
    of work for an edit; the workflow runs each edit with its evaluations so). Every command's
    outputs are checked and locked before the first one starts; when a later command fails, the
    files the earlier ones wrote are removed, so a failed chain leaves no partial result."""
    if not os.environ.get("CURVMEM_DEBUG"):
        sys.unraisablehook = _cleanup_note
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    commands = [parser.parse_args(words) for words in split_chain(parser, argv)]
    command_age = begin_command()
    args, running = commands[0], []
    previous = _catch_sigterm()
    try:
        # Outputs are checked and locked before anything is computed: a path that cannot be
        # written fails in a second, not after hours, and two processes writing one output do
        # not both succeed (the lock is dropped by the kernel if this process dies).
        planned = []
        for args in commands:
            check_counts(args)
            targets = outputs(args)
            for path, flag, is_dir in targets:
                check_output(path, flag, is_dir)
                if is_dir and args.command in NEW_DIRS:
                    check_new_dir(path, flag)
            planned.append((args, targets, locked_paths(args, targets)))
        paths = [p for _, targets, _ in planned for p in {os.path.realpath(t[0]) for t in targets}]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:  # (one command naming a file twice says so itself)
            raise ValueError(f"two commands of one {THEN} chain write {twice[0]}")
        existed = {path for _, _, locked in planned for path, _ in locked if os.path.lexists(path)}
        _run_chain(planned, existed, running)  # `running`: the command an error names
    except (ValueError, FileNotFoundError, KeyError) as e:
        args = running[-1] if running else args
        if os.environ.get("CURVMEM_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"curvmem {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: a full disk, a lost mount
        args = running[-1] if running else args
        if os.environ.get("CURVMEM_DEBUG"):
            raise
        print(f"curvmem {args.command}: error: {e}", file=sys.stderr)
        return 1
    except (Terminated, KeyboardInterrupt) as e:  # cleaned up on the way here, as for an error
        args = running[-1] if running else args
        name = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        print(f"curvmem {args.command}: stopped by {name}; what it had begun writing was "
              "removed", file=sys.stderr)
        return SIGNAL_EXIT[name]
    finally:
        if previous is not _NOT_SET:
            signal.signal(signal.SIGTERM, previous)
    split = startup_split(command_age)
    if split is not None:  # benchmarks/bench_default.py reads this line from the job logs
        print(f"curvmem timing: {json.dumps(split)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
