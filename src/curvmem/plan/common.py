"""What the planner's modules share: its error, content hashes, the one quoting helper, slugs."""

from __future__ import annotations

import hashlib
import json
import re
import shlex

NEVER = "(?!x)x"  # a wildcard constraint that matches nothing


class PlanError(ValueError):
    """A config the workflow cannot plan (the schema passed, but it asks for the impossible)."""


def digest(obj, n=10):
    """Short content hash of a JSON-able object (key order does not matter).

    Args:
        obj: any JSON-able value.
        n: how many hex digits to keep.

    Returns:
        The first `n` hex digits of the sha256 of its canonical JSON.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def flags(*items):
    """The one quoting helper: every value a rule's command gets from the plan passes here.

    Each value becomes exactly one shell word (shlex-quoted, so a space, quote, `;`, `$()` or
    backtick in a config value stays literal); a list or tuple value is one word, joined with
    commas (`--layers 1,2`); None values are left out, and so is an item with no value left.
    Names are the code's own flags, never config text. The rules quote their plain values
    themselves (`{input:q}`); tests/test_injection.py checks both.

    Args:
        *items: `(--name, value, ...)` tuples.

    Returns:
        One string of flags and quoted values.
    """
    out = []
    for name, *values in items:
        words = [shlex.quote(",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v))
                 for v in values if v is not None]
        if words:
            out += [name, *words]
    return " ".join(out)


def one_of(names):
    """A regex matching exactly these wildcard values (or nothing when there are none).

    Args:
        names: the values.

    Returns:
        An alternation of the escaped values, or `NEVER`.
    """
    return "|".join(re.escape(n) for n in names) if names else NEVER


def slug(text: str) -> str:
    """A hub id, revision or data name as one path component (owner/name -> owner--name).

    Args:
        text: the name.

    Returns:
        The name with `/` as `--` and every other character outside [A-Za-z0-9._-] as `-`.
    """
    return re.sub(r"[^A-Za-z0-9._-]", "-", text.replace("/", "--"))
