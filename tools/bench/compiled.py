"""Benchmark variants for compiled packages: the model after a pipeline, lowered
through TVM for a named target, run by the runtime loader.

    compiled_variant("tvm-x86-O1", "-O1", "x86")

Symbolic input dims that TVM's frontend cannot lower are pinned to the timed
input shapes (recorded in the variant's info)."""
from __future__ import annotations

from typing import Mapping, Sequence

from ...ir import BuildError, LoweringError, PassError
from .variants import BuildContext, Built, Skipped, Variant, _slug


def compiled_variant(name: str, pipeline: str, target: str,
                     input_shapes: Mapping[str, Sequence[int]] | None = None, db: str | None = None,
                     dequantize: str = "run") -> Variant:
    def build(ctx: BuildContext) -> Built:
        from ...codegen import TargetMismatchError, resolve_target
        from ...codegen.compiler import compile as compile_model
        from ...codegen.runtime import load as load_package

        resolved = resolve_target(target)
        spec = target
        if resolved.device == "cpu" and not resolved.linker and "{" not in target:
            # plan for the harness's thread count: this process's affinity can read 1 core once
            # onnxruntime sessions exist, which gave another TVM target (and tuning-database key)
            spec = f"{target}{{num-cores={ctx.threads}}}"
            resolved = resolve_target(spec)
        path = ctx.work_dir / f"{_slug(name)}.ofpkg"
        shapes = dict(input_shapes or ctx.pinned_shapes or {})
        try:
            pkg = compile_model(ctx.original, spec, pipeline, output=path, input_shapes=shapes or None, db=db,
                                calibration=_samples_of_shape(ctx.calibration, shapes), dequantize=dequantize)
        except (LoweringError, BuildError):
            if shapes or not (ctx.timing_feeds or ctx.calibration):
                raise
            # Pin to the timed inputs, so the module can at least be timed like the others.
            shapes = {k: tuple(v.shape) for k, v in (ctx.timing_feeds or ctx.calibration[0]).items()}
            ctx.pinned_shapes = shapes
            samples = _samples_of_shape(ctx.calibration, shapes)
            try:
                pkg = compile_model(ctx.original, spec, pipeline, output=path, input_shapes=shapes, db=db,
                                    calibration=samples, dequantize=dequantize)
            except PassError as exc:
                if ctx.calibration and not samples:
                    raise PassError(f"{exc} (the model compiles only pinned to {shapes}, and none of the "
                                    f"{len(ctx.calibration)} calibration samples has those shapes)") from exc
                raise
        try:
            model = load_package(path, threads=ctx.threads if resolved.device == "cpu" else None)
        except TargetMismatchError as exc:
            raise Skipped(f"built, but cannot run here: {exc}") from None

        def run(feeds):
            return model(dict(feeds))

        info = {"target": pkg.manifest["target"]["name"], "tvm_target": pkg.manifest["target"]["tvm"],
                "pipeline": pkg.manifest["pipeline"], "passes": pkg.manifest["passes"],
                "compile_seconds": pkg.seconds, "cpu_kernels": pkg.manifest.get("cpu_kernels"),
                "tuning": pkg.manifest.get("tuning"), "dequantize": dequantize, "bytes": {k: f["bytes"] for k, f in pkg.manifest["files"].items()}}
        if shapes:
            info["pinned_input_shapes"] = {k: list(v) for k, v in shapes.items()}
        return Built(run, path, info, model=pkg.model)

    how = (f"tuned with {db}" if db else "untuned") + (", dequantized at load" if dequantize == "load" else "")
    return Variant(name, "compiled", f"TVM package for {target} ({how}) after `{pipeline}`", build)


def _samples_of_shape(samples, shapes):
    """Data-driven passes of a pinned model can use only the samples of the pinned shape."""
    if not shapes or not samples:
        return samples or None
    return [s for s in samples if all(tuple(s[k].shape) == tuple(v) for k, v in shapes.items() if k in s)] or None
