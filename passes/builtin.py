"""Imports every built-in pass module so their @register_pass decorators run."""
from . import cleanup, constants, cse, fold, fusion, graphsurgeon, infer, quantize  # noqa: F401
