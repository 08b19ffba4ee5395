"""compile: ONNX model -> pass pipeline -> Relax -> library -> package (one archive).

    pkg = onnxforge.compile("model.onnx", target="x86", pipeline="-O2", output="model.ofpkg")
    out = pkg(x=array)                  # loads it with the runtime loader
"""
from __future__ import annotations

import dataclasses
import datetime
import io
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..ir import BuildError, DataError, LoweringError, Model, OnnxforgeError, PipelineError, infer_shapes, load
from ..passes import Pipeline, optimize
from ..passes.pipeline import resolve_pipeline
from . import manifest as fmt
from .cpu import CPU_KERNELS
from .device.libs import OPENBLAS, OPENBLAS_PACKAGE
from .manifest import TensorSpec
from .targets import ResolvedTarget, resolve_target

if TYPE_CHECKING:
    import onnx

DEQUANTIZE = ("run", "load")  # when quantized weights are dequantized: every run, or once at load

InputShapes = Mapping[str, Sequence[int]]


@dataclasses.dataclass
class Package:
    """A compiled package on disk, with its manifest and how long each step took."""

    path: Path
    manifest: dict[str, Any]
    seconds: dict[str, float]
    _loaded: Any = dataclasses.field(default=None, repr=False)
    # the optimized ONNX model the package was lowered from (compile() only, not stored)
    model: "Model | None" = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(t) for t in self.manifest["inputs"]]

    @property
    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec.from_json(t) for t in self.manifest["outputs"]]

    @property
    def target(self) -> str:
        return self.manifest["target"]["name"]

    def load(self):
        """The runtime loader's CompiledModel for this package (cached)."""
        if self._loaded is None:
            from .runtime import load as load_package

            self._loaded = load_package(self.path)
        return self._loaded

    def __call__(self, feeds: Mapping[str, np.ndarray] | None = None, /, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        return self.load()(feeds, **inputs)

    def save(self, path: str | os.PathLike) -> Path:
        """Copy the package to `path` (the package itself is one file)."""
        dest = Path(path)
        shutil.copyfile(self.path, dest)
        return dest




def compile(
    model: "Model | str | os.PathLike | onnx.ModelProto | bytes",
    target: str = "x86",
    pipeline: "str | Pipeline" = "-O1",
    *,
    output: str | os.PathLike | None = None,
    input_shapes: InputShapes | None = None,
    cpu_kernels: str | None = None,
    db: str | os.PathLike | None = None,
    calibration=None,
    dequantize: str = "run",
    sign_key: str | os.PathLike | None = None,
) -> Package:
    """Optimize `model` with `pipeline`, lower it to TVM Relax, build it for the named
    `target` (see `onnxforge targets`) and write one package file to `output` (a
    fresh temporary folder when None). `input_shapes` pins symbolic input dims,
    e.g. {"x": (1, 3, 48, 320)}. `db`: a tuning database folder written by
    `onnxforge tune` (codegen.tune); its records for this target are applied. `calibration`: samples for passes that
    need data (onnxforge.Calibration.from_source). `cpu_kernels` (CPU targets): "auto" (default, or
    $ONNXFORGE_CPU_KERNELS), "blas", "schedule" or "tvm" (codegen.build.resolve_cpu_kernels).
    `dequantize`: "run" (default) dequantizes quantized weights inside every run, so
    memory holds them quantized; "load" does it once when the package is loaded
    (with every other computation on weights alone), so runs go at float speed and
    memory holds float weights. The package file is the same size either way.
    `sign_key`: a private key file (`onnxforge keygen`): the package is signed with
    it, for loaders given its public key as trusted (codegen.signing)."""
    from .build import build_library  # imports tvm: only when compiling

    seconds: dict[str, float] = {}
    if cpu_kernels not in (None, *CPU_KERNELS):
        raise PipelineError(f"cpu_kernels must be one of {', '.join(CPU_KERNELS)}, got {cpu_kernels!r}")
    if dequantize not in DEQUANTIZE:
        raise PipelineError(f"dequantize must be one of {', '.join(DEQUANTIZE)}, got {dequantize!r}")
    resolved = resolve_target(target)
    resolved.check_linker()  # before the slow part: a missing cross compiler fails at once
    if sign_key is not None:  # so does a key that cannot sign
        from .signing import load_private_key

        load_private_key(sign_key)
    with _recurrent_lowering(resolved, cpu_kernels):
        model, source, optimized, lowered = prepare(model, pipeline, input_shapes, seconds, calibration)
    out = Path(output) if output is not None else Path(tempfile.mkdtemp(prefix="onnxforge-")) / "model.ofpkg"
    if out.parent and not out.parent.exists():
        raise OnnxforgeError(f"cannot write {out}: folder {out.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix="onnxforge-build-") as tmp:
        lib = Path(tmp) / fmt.LIBRARY
        t0 = time.perf_counter()
        try:
            built = build_library(lowered, resolved, lib, cpu_kernels=cpu_kernels, db=db, dequantize=dequantize)
        except BuildError as exc:
            def builds(pinned: Model) -> bool:  # the same build at pinned sizes, into a scratch file
                from .lower import lower

                with _recurrent_lowering(resolved, cpu_kernels):
                    low = lower(pinned)
                build_library(low, resolved, Path(tmp) / "pinned.so", cpu_kernels=cpu_kernels, db=db,
                              dequantize=dequantize)
                return True

            raise BuildError(f"{exc}{_pin_hint(model, optimized.model, builds, tries=1)}") from exc
        cpu_kernels = built["cpu_kernels"]
        seconds["build"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        weights, param_specs = _weights_npz(lowered.params, lowered.packed)
        manifest = _manifest(model, source, lowered, param_specs, resolved, optimized.pipeline,
                             input_shapes)
        manifest["dequantize"] = dequantize
        if built.get("transform_params"):  # loaders run main_transform_params on the weights once
            manifest["transform_params"] = True
        if resolved.device == "cpu":
            manifest["cpu_kernels"] = cpu_kernels
        if "tuning" in built:
            manifest["tuning"] = built["tuning"]
        if cpu_kernels == "blas":  # the library links OpenBLAS: the loader must find it where it runs
            manifest["native_libraries"] = [{"soname": OPENBLAS, "python_package": OPENBLAS_PACKAGE}]
        fmt.write_package(out, manifest, {fmt.LIBRARY: lib.read_bytes(), fmt.WEIGHTS: weights}, sign_key=sign_key)
        seconds["package"] = time.perf_counter() - t0
    manifest, _ = fmt.read_package(out)  # what a loader will see, checksums included
    return Package(out, manifest, seconds, model=optimized.model)


def _recurrent_lowering(target: ResolvedTarget, cpu_kernels: str | None):
    """RNN/GRU/LSTM call onnxforge's C kernels where the build links them (CPU, "blas"),
    else they are unrolled into Relax ops (codegen/recurrent.py)."""
    from .build import resolve_cpu_kernels
    from .recurrent import use_extern_kernels

    linked = target.device == "cpu" and resolve_cpu_kernels(cpu_kernels, target)[0] == "blas"
    return use_extern_kernels(linked)


def prepare(model, pipeline, input_shapes: InputShapes | None, seconds: dict[str, float], calibration=None):
    """Load, pin, optimize and lower: (model as loaded, its path or None, the
    OptimizeResult, the Lowered module). Shared by compile and tune."""
    from .lower import lower  # imports tvm

    pipeline = resolve_pipeline(pipeline)
    pipeline.validate()
    source = None
    if isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        model = load(source)
    elif not isinstance(model, Model):
        model = load(model)  # a ModelProto or serialized bytes
    t0 = time.perf_counter()
    if input_shapes:
        model = pin_input_shapes(model, input_shapes)
    optimized = optimize(model, pipeline, calibration=calibration)  # data for gptq, static, pruning
    seconds["optimize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        lowered = lower(optimized.model)
    except LoweringError as exc:
        raise LoweringError(f"{exc}{_pin_hint(model, optimized.model)}") from exc
    seconds["lower"] = time.perf_counter() - t0
    return model, source, optimized, lowered


def pin_input_shapes(model: Model, shapes: InputShapes) -> Model:
    """A copy of `model` whose named inputs have the given static shapes (checked
    against the declared rank and static dims), with shapes re-inferred. A named
    dim pinned in one input takes the same size in the other inputs that share it
    (state [2,batch,128] follows input [batch,sequence])."""
    model = model.clone()
    inputs = {v.name: v for v in model.graph.inputs if not v.is_initializer}
    sizes: dict[str, tuple[int, str]] = {}  # symbolic dim -> (size, the input that pinned it)
    for name, shape in shapes.items():
        value = inputs.get(name)
        if value is None:
            raise DataError(f"--input-shape names input {name!r}, but the model's inputs are: {', '.join(inputs)}")
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise DataError(f"input {name!r}: shape {list(shape)} has a negative dim")
        if value.shape is not None:
            if len(value.shape) != len(shape):
                raise DataError(f"input {name!r} has rank {len(value.shape)} ({value.type_str()}), "
                                f"but the pinned shape {list(shape)} has rank {len(shape)}")
            for axis, (old, new) in enumerate(zip(value.shape, shape)):
                if isinstance(old, int) and old != new:
                    raise DataError(f"input {name!r}: dim {axis} is {old} in the model, cannot pin it to {new}")
                if isinstance(old, str):
                    if sizes.get(old, (new,))[0] != new:
                        raise DataError(f"input {name!r}: dim {axis} ({old}) pinned to {new}, but input "
                                        f"{sizes[old][1]!r} pins {old} to {sizes[old][0]}")
                    sizes.setdefault(old, (new, name))
        value.shape = shape
    for value in inputs.values():
        if value.name not in shapes and value.shape is not None:
            value.shape = tuple(sizes[d][0] if isinstance(d, str) and d in sizes else d for d in value.shape)
    infer_shapes(model)
    return model


def _pin_hint(model: Model, optimized: Model, works=None, tries: int | None = None) -> str:
    """When lowering (or, with `works`, building) failed on a model with symbolic
    input dims: lower it again with them pinned, at each set of sizes onnxruntime
    runs the model at (passes.invent; the first `tries` of them), and only if
    `works` (default: it lowers) say so with that exact --input-shape.
    Pinning cannot help a missing op or an unsupported construct: then no hint."""
    from ..passes.invent import iter_invented
    from .lower import lower

    works = works or lower

    dynamic = [v.name for v in optimized.graph.inputs if not v.is_initializer and not v.is_static_shape()]
    if not dynamic or any(v.shape is None for v in optimized.graph.inputs if v.name in dynamic):
        return ""
    verb = "lowers" if works is lower else "builds"
    try:
        runnable = (inv for inv in iter_invented(model) if inv.error is None)  # sizes onnxruntime runs
        for i, invented in enumerate(runnable):
            if tries is not None and i >= tries:
                break
            shapes = {k: v for k, v in invented.shapes.items() if k in dynamic}
            try:
                works(pin_input_shapes(optimized, shapes))
            except Exception:  # pinned at these sizes it fails too
                continue
            flags = " ".join(f"--input-shape {k}={','.join(map(str, v))}" for k, v in shapes.items())
            python = ", ".join(f"{k!r}: {v}" for k, v in shapes.items())
            return (f"\n  it {verb} with the symbolic input dims pinned: {flags} (Python: input_shapes={{{python}}}); "
                    "these sizes are examples onnxruntime runs: pin the sizes you will run the model at")
    except Exception:  # no inputs can be invented (an input without a type): no hint
        pass
    return ""


def _weights_npz(params: list[tuple[str, np.ndarray]], packed: dict[str, dict] | None = None
                 ) -> tuple[bytes, list[dict[str, Any]]]:
    """Weights as an .npz (keys p0, p1, ... in call order; names in the manifest).
    dtypes numpy cannot store without pickle (bfloat16, float8) go in as raw bytes;
    int4 weights arrive packed (uint8, two per byte; the module unpacks them), their
    spec says so under "packed" (the logical dtype and shape)."""
    arrays, specs = {}, []
    for i, (name, array) in enumerate(params):
        array = np.require(array, requirements="C")  # keeps 0-d arrays 0-d, unlike ascontiguousarray
        stored = array if _plain_dtype(array.dtype) else array.view(np.uint8)
        arrays[f"p{i}"] = stored
        specs.append({"name": name, "dtype": array.dtype.name, "shape": list(array.shape), "key": f"p{i}",
                      "raw": stored is not array})
        if packed and name in packed:
            specs[-1]["packed"] = packed[name]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue(), specs


def _plain_dtype(dtype: np.dtype) -> bool:
    return dtype.kind in "biuf" and dtype.num < 256  # ml_dtypes' types are user-defined (num >= 256)


def _manifest(original: Model, source: str | None, lowered, params: list[dict[str, Any]],
              target: ResolvedTarget, pipeline: Pipeline, input_shapes: InputShapes | None) -> dict[str, Any]:
    import tvm

    from .. import __version__

    try:
        import tvm_ffi

        ffi_version = tvm_ffi.__version__
    except Exception:  # the version is informative only
        ffi_version = None
    return {
        "format": fmt.FORMAT,
        "format_version": fmt.FORMAT_VERSION,
        "model": {"name": original.graph.name, "source": os.path.basename(source) if source else None,
                  "opset": original.opset},
        "inputs": [t.to_json() for t in lowered.inputs],
        "outputs": [t.to_json() for t in lowered.outputs],
        "params": params,
        "target": target.to_json(),
        "pipeline": str(pipeline),
        "passes": ",".join(str(p) for p in pipeline.flat()),
        "input_shapes": {k: [int(d) for d in v] for k, v in (input_shapes or {}).items()},
        "versions": {"onnxforge": __version__, "tvm": tvm.__version__, "tvm_ffi": ffi_version,
                     "python": platform.python_version()},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
