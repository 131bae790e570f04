"""TEMPORARY (issue 15): the old `curvmem.models` names, until world.py moves into curvmem.world.
Use curvmem.model."""

from curvmem.model.adapters import *  # noqa: F403
from curvmem.model.load import load_model, load_tokenizer  # noqa: F401
