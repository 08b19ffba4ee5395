"""Imports every built-in pass module so their @register_pass decorators run."""
from . import cleanup, constants, cse, fold, fusion, graphsurgeon, infer, quantize  # noqa: F401
from . import lowrank, prune  # noqa: F401  (lowrank, prune-channels; the groups analysis is passes.groups)
