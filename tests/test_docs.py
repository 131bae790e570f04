"""The docs follow the code: docs/ARCHITECTURE.md's module map names every module of src/curvmem
and its CLI contract every `curvmem` command, and the README's and docs' links resolve."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from curvmem.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "curvmem"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"


def _section(text: str, heading: str) -> str:
    """The text under `## heading...` up to the next `## ` heading."""
    start = text.index("\n## " + heading)
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def package_modules(root: Path = PACKAGE) -> set[str]:
    """Dotted names of every module and package under src/curvmem (a package by its own name)."""
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def mapped_modules(architecture: str) -> set[str]:
    """The modules the module map's table lists (its first column)."""
    return set(re.findall(r"^\| `(curvmem(?:\.\w+)*)` \|", _section(architecture, "Module map"),
                          flags=re.M))


def cli_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[str]:
    """Every leaf command of the parser, as words: {"collect", "evaluate memorization", ...}."""
    out = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out |= cli_commands(sub, (*prefix, name)) or {" ".join((*prefix, name))}
    return out


def contract_commands(architecture: str) -> set[str]:
    """The commands the CLI contract's forms name: the lower-case words after `curvmem`, up to
    the first argument (`curvmem COMMAND ... --then ...`, the chain's form, names none)."""
    block = _section(architecture, "CLI contract")
    out = set()
    for line in block.splitlines():
        words = line.split()
        if not words or words[0] != "curvmem":
            continue
        command = []
        for word in words[1:]:
            if not re.fullmatch(r"[a-z][a-z0-9-]*", word):
                break
            command.append(word)
        if command:
            out.add(" ".join(command))
    return out


def test_the_module_map_lists_every_module_and_no_other():
    modules, mapped = package_modules(), mapped_modules(ARCHITECTURE.read_text())
    assert "curvmem.report.claims" in modules and "curvmem" in modules  # the walk sees them
    assert not modules - mapped, f"missing from docs/ARCHITECTURE.md's module map: " \
                                 f"{sorted(modules - mapped)}"
    assert not mapped - modules, f"in the module map but not in src/curvmem: " \
                                 f"{sorted(mapped - modules)}"


def test_the_cli_contract_lists_every_command_and_no_other():
    commands = cli_commands(build_parser())
    documented = contract_commands(ARCHITECTURE.read_text())
    assert {"collect", "evaluate memorization", "analyze batch", "baseline bsn"} <= commands
    assert not commands - documented, f"missing from docs/ARCHITECTURE.md's CLI contract: " \
                                      f"{sorted(commands - documented)}"
    assert not documented - commands, f"in the CLI contract but not a command: " \
                                      f"{sorted(documented - commands)}"


def test_the_checks_see_a_missing_module_and_a_missing_command(tmp_path):
    """The two checks fail as they should: a module file the map lacks, a form the CLI lacks."""
    (tmp_path / "curvmem" / "report").mkdir(parents=True)
    for name in ("__init__.py", "report/__init__.py", "report/new_table.py"):
        (tmp_path / "curvmem" / name).write_text("")
    text = ("# x\n\n## Module map\n\n| `curvmem` | a |\n| `curvmem.report` | b |\n\n"
            "## CLI contract\n\n```\ncurvmem collect --model M\ncurvmem analyze spectra --eigen D\n"
            "curvmem COMMAND ARGS... --then COMMAND\n```\n")
    assert package_modules(tmp_path / "curvmem") - mapped_modules(text) == {
        "curvmem.report.new_table"}
    assert contract_commands(text) == {"collect", "analyze spectra"}


# a Markdown link or image target that is a path in this repository
LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def test_the_readme_and_docs_links_resolve():
    pages = [ROOT / "README.md", ROOT / "SECURITY.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in LINK.findall(page.read_text()):
            path = target.split("#", 1)[0]
            if path and not (page.parent / path).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, f"links to nothing: {broken}"
