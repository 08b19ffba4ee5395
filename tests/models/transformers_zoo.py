"""The small transformers the fusion tests export (builder: tools/transformers_zoo.py,
which also exports the full-size ones for tools/zoo_check.py)."""
from onnxforge.tools.transformers_zoo import ARCHS, EXPORTERS, SMALL, __file__ as BUILDER  # noqa: F401
