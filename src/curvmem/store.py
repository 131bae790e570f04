"""TEMPORARY (issue 15): the old `curvmem.store` names, until world.py moves into curvmem.world.
Use curvmem.io and curvmem.schema."""

from curvmem.io import *  # noqa: F403
from curvmem.io import StoreError, _jsonable  # noqa: F401
from curvmem.schema import *  # noqa: F403
from curvmem.schema import LayerFile, edit_sidecar, layer_path, read_edit, write_edit, write_layer  # noqa: F401


def read_layer(*args, **kwargs):
    from curvmem.model.load import read_layer as read

    return read(*args, **kwargs)
