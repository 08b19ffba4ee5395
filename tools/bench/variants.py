"""What a benchmark compares: the original model in onnxruntime (the baseline), the
output of each onnxforge pipeline, and the other tools' answers to the same job
(OpenVINO in fp32 and at its default precision, onnxruntime's own int8 quantizers,
onnxsim). Each variant builds an artifact on
disk and a runner (feeds -> outputs); building may fail without stopping the rest."""
from __future__ import annotations

import dataclasses
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import onnx

from ... import ir
from ...passes import optimize

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclasses.dataclass
class BuildContext:
    original: Path
    work_dir: Path  # where variant artifacts are written
    threads: int
    calibration: list[dict[str, np.ndarray]] | None  # model feeds, or None without data
    timing_feeds: dict[str, np.ndarray] | None = None  # the inputs every variant is timed on
    # input shapes the first compiled variant had to be pinned to: later ones are pinned
    # alike, so that compiled latencies compare like with like
    pinned_shapes: dict[str, tuple[int, ...]] | None = None


@dataclasses.dataclass
class Built:
    runner: Runner
    artifact: Path  # the file whose size is reported
    info: dict[str, Any] = dataclasses.field(default_factory=dict)
    model: Any = None  # the ir.Model behind a non-ONNX artifact (its weights and FLOPs are reported)


class Skipped(Exception):
    """The variant does not apply here (e.g. static quantization without data)."""


@dataclasses.dataclass
class Variant:
    name: str
    kind: str  # baseline | pipeline | comparator | compiled
    description: str
    build: Callable[[BuildContext], Built]


def ort_runner(path: Path, threads: int) -> Runner:
    """onnxruntime on CPU, all graph optimizations, `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if os.environ.get("ONNXFORGE_BENCH_SPIN", "0") == "0":
        # Variants run round-robin: a session's pool would otherwise keep spinning
        # on the cores after its run and slow down whichever variant runs next.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, session.run(names, dict(feeds))))

    return run


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.-") or "variant"


def baseline() -> Variant:
    def build(ctx: BuildContext) -> Built:
        return Built(ort_runner(ctx.original, ctx.threads), ctx.original)

    return Variant("onnxruntime", "baseline", "onnxruntime on the original model", build)


def pipeline(name: str, text: str) -> Variant:
    def build(ctx: BuildContext) -> Built:
        # passes that learn from data (quantize-static, gptq) read the run's calibration samples
        result = optimize(ir.load(ctx.original), text, calibration=ctx.calibration)
        path = ctx.work_dir / f"{_slug(name)}.onnx"
        ir.save(result.model, path)
        passes = [{"pass": r.spec, "changed": r.changed, "seconds": r.seconds, "stats": r.stats} for r in result.records]
        return Built(ort_runner(path, ctx.threads), path, {"pipeline": str(result.pipeline), "passes": passes,
                                                            "optimize_seconds": result.seconds})

    return Variant(name, "pipeline", f"onnxruntime on the output of `{text}`", build)


def _initializer_copy(ctx: BuildContext, min_opset: int = 0) -> Path:
    """onnxruntime's quantizers only see weights held as initializers; models that
    keep them in Constant nodes (PP-OCRv4) get them moved first. Per-channel QDQ needs
    DequantizeLinear's `axis` (opset 13), so older models are converted up to
    `min_opset` with onnx's version converter (onnxruntime's quantizer writes an
    invalid model otherwise)."""
    path = ctx.work_dir / f"_weights_as_initializers{min_opset or ''}.onnx"
    if not path.exists():
        proto = ir.to_proto(optimize(ir.load(ctx.original), "constants-to-initializers").model)
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        if opset < min_opset:
            from onnx import version_converter

            proto = version_converter.convert_version(proto, min_opset)
        onnx.save(proto, str(path))
    return path


def ort_quantize_dynamic(weight_type: str = "QUInt8") -> Variant:
    """uint8 weights by default: measured here, onnxruntime's own default (int8
    weights) reads 0 of 300 PP-OCRv4 lines right and its ConvInteger is 4x slower
    on AVX2 without VNNI; uint8 gives its best answer (and BENCHMARKS.md's 0.58)."""
    def build(ctx: BuildContext) -> Built:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        path = ctx.work_dir / f"ort_quantize_dynamic_{weight_type.lower()}.onnx"
        quantize_dynamic(_initializer_copy(ctx), path, weight_type=getattr(QuantType, weight_type))
        return Built(ort_runner(path, ctx.threads), path, {"settings": f"quantize_dynamic, {weight_type} weights"})

    name = "ort-quantize-dynamic" + ("" if weight_type == "QUInt8" else "-s8")
    return Variant(name, "comparator", f"onnxruntime.quantization.quantize_dynamic ({weight_type} weights)", build)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over our calibration feeds."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def ort_quantize_static() -> Variant:
    def build(ctx: BuildContext) -> Built:
        if not ctx.calibration:
            raise Skipped("needs calibration data (--data)")
        from onnxruntime.quantization import QuantFormat, quantize_static

        path = ctx.work_dir / "ort_quantize_static.onnx"
        quantize_static(_initializer_copy(ctx, min_opset=13), path, _Reader(ctx.calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True)
        return Built(ort_runner(path, ctx.threads), path, {
            "settings": f"QDQ, per-channel int8 weights, min-max calibration on {len(ctx.calibration)} samples"})

    return Variant("ort-quantize-static", "comparator", "onnxruntime.quantization.quantize_static (QDQ)", build)


def onnxsim_variant() -> Variant:
    def build(ctx: BuildContext) -> Built:
        import onnxsim

        simplified, ok = onnxsim.simplify(onnx.load(str(ctx.original)))
        if not ok:
            raise RuntimeError("onnxsim's own check of its output failed")
        path = ctx.work_dir / "onnxsim.onnx"
        onnx.save(simplified, str(path))
        return Built(ort_runner(path, ctx.threads), path)

    return Variant("onnxsim", "comparator", "onnxruntime on onnxsim's output", build)


def openvino_variant(precision: str | None) -> Variant:
    """OpenVINO's CPU plugin on the ONNX file itself (it reads ONNX directly): the
    harness's thread count, latency hint, one stream; `precision` "f32" forces fp32
    (INFERENCE_PRECISION_HINT), None keeps OpenVINO's default (bf16 where the CPU has
    AMX / AVX512-BF16, else f32). Symbolic dims stay symbolic, as for every variant."""
    def build(ctx: BuildContext) -> Built:
        try:
            import openvino
        except ImportError:
            raise Skipped("openvino is not installed (pip install 'onnxforge[bench]' or pip install openvino)") from None
        core = openvino.Core()
        config = {"INFERENCE_NUM_THREADS": ctx.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
        if precision:
            config["INFERENCE_PRECISION_HINT"] = precision
        compiled = core.compile_model(core.read_model(str(ctx.original)), "CPU", config)
        request = compiled.create_infer_request()
        wanted = [o.name for o in onnx.load(str(ctx.original), load_external_data=False).graph.output]
        ports = []
        for name in wanted:  # OpenVINO keeps the ONNX tensor names among each output's names
            port = next((p for p in compiled.outputs if name in p.get_names()), None)
            if port is None:
                raise RuntimeError(f"OpenVINO's compiled model has no output named {name!r}")
            ports.append(port)

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = request.infer(dict(feeds))
            return {name: np.asarray(result[port]) for name, port in zip(wanted, ports)}

        used = compiled.get_property("INFERENCE_PRECISION_HINT")  # an openvino.Type: "f32", "bf16"
        used = used.to_string() if hasattr(used, "to_string") else str(used)
        return Built(run, ctx.original, {"openvino": openvino.__version__, "inference_precision": used,
                                         "settings": config})

    name = "openvino" if precision == "f32" else "openvino-default"
    what = "fp32" if precision == "f32" else "its default precision (bf16 on AMX / AVX512-BF16 hosts)"
    return Variant(name, "comparator", f"OpenVINO CPU on the original model, {what}", build)


COMPARATORS: dict[str, Callable[[], Variant]] = {
    "openvino": lambda: openvino_variant("f32"),
    "openvino-default": lambda: openvino_variant(None),
    "ort-quantize-dynamic": ort_quantize_dynamic,
    "ort-quantize-dynamic-s8": lambda: ort_quantize_dynamic("QInt8"),
    "ort-quantize-static": ort_quantize_static,
    "onnxsim": onnxsim_variant,
}


# What runs when the user names none: the s8 dynamic variant only on request (see above).
DEFAULT_COMPARATORS = ("openvino", "openvino-default", "ort-quantize-dynamic", "ort-quantize-static", "onnxsim")


def split_pipeline_arg(arg: str) -> tuple[str, str]:
    """`NAME=PIPELINE` -> (NAME, PIPELINE); a bare pipeline is named by its own text."""
    m = re.fullmatch(r"([A-Za-z0-9_.][A-Za-z0-9_.-]*)=(.+)", arg, flags=re.S)
    return (m.group(1), m.group(2)) if m else (arg, arg)


def parse_pipeline_arg(arg: str) -> Variant:
    return pipeline(*split_pipeline_arg(arg))


def timed_build(variant: Variant, ctx: BuildContext) -> tuple[Built, float]:
    t0 = time.perf_counter()
    built = variant.build(ctx)
    return built, time.perf_counter() - t0
