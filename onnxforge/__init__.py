"""onnxforge: load an ONNX model, run pass pipelines over it, save or compile it.

    import onnxforge
    m = onnxforge.load("model.onnx")
    result = onnxforge.optimize(m, "cleanup,fold-constants")
    print(result)                      # per pass: changed?, time, statistics
    onnxforge.save(result.model, "out.onnx")
"""
from __future__ import annotations

from .ir import Graph, Model, Node, OnnxforgeError, Value, load, save, verify
from .passes import Calibration, Pass, PassManager, PassResult, Pipeline, optimize, register_pass

__version__ = "0.1.0"


def compile(model, target: str = "x86", pipeline="-O1", *, output=None, input_shapes=None, cpu_kernels=None, db=None,
            calibration=None, dequantize="run"):
    """Compile a model with TVM into one package file for a named target:

        pkg = onnxforge.compile("model.onnx", target="x86", pipeline="-O2", output="model.ofpkg")
        out = pkg(x=array)        # or onnxforge.runtime.load("model.ofpkg")(x=array) on the device

    See onnxforge.codegen.compiler.compile. Imports tvm only when called."""
    from .codegen.compiler import compile as _compile

    return _compile(model, target, pipeline, output=output, input_shapes=input_shapes, cpu_kernels=cpu_kernels, db=db,
                    calibration=calibration, dequantize=dequantize)


def tune(model, target: str = "x86", *, db, trials=None, time_budget=None, pipeline="-O2", **options):
    """Tune a model's CPU kernels with MetaSchedule into the database folder `db`
    (keyed by target; `compile(..., db=db)` applies it). See onnxforge.codegen.tune.tune."""
    from .codegen.tune import tune as _tune

    return _tune(model, target, db=db, trials=trials, time_budget=time_budget, pipeline=pipeline, **options)


def __getattr__(name: str):
    """`onnxforge.runtime` without importing it first (it imports no tvm until a package is loaded)."""
    if name == "runtime":
        import importlib

        return importlib.import_module(".runtime", __name__)
    raise AttributeError(f"module 'onnxforge' has no attribute {name!r}")


__all__ = [
    "load", "save", "optimize", "compile", "tune", "verify", "Pipeline", "PassManager", "Pass", "PassResult", "register_pass",
    "Model", "Graph", "Node", "Value", "OnnxforgeError", "Calibration", "__version__",
]
