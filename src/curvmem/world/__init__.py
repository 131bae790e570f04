"""TEMPORARY (issue 15): runs ../world.py here until it moves into this package."""

import pathlib as _pathlib

_src = _pathlib.Path(__file__).resolve().parent.parent / "world.py"
exec(compile(_src.read_text(), str(_src), "exec"))  # noqa: S102
