"""`onnxforge compile | run | targets | compare`: compiled packages from the
command line. Plain functions; tools/cli.py registers them.

Exit codes as in cli.py, plus: 3 a package that is corrupt, tampered with or built
for another machine; 5 compare found outputs beyond tolerance; 6 lowering or
building failed."""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ..codegen import TARGETS, TargetError, TensorSpec, resolve_target
from ..codegen.manifest import SUFFIX
from ..ir import DataError, NumericMismatchError, load
from ..passes import PRESETS
from ..passes.check import compare_outputs, load_inputs, run_ort
from ..passes.invent import invent_inputs
from .summary import human_bytes

console = Console()
err = Console(stderr=True, soft_wrap=True)  # one line per message, whatever the width


# ---------------------------------------------------------------- helpers
def parse_input_shapes(items: List[str]) -> dict[str, tuple[int, ...]]:
    """['x=1,3,48,320'] -> {'x': (1, 3, 48, 320)}."""
    shapes = {}
    for item in items:
        name, eq, dims = item.rpartition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not eq or not name or not shape:
            raise DataError(f"--input-shape wants NAME=D0,D1,... (e.g. x=1,3,48,320), got {item!r}")
        shapes[name] = shape
    return shapes


def sample_feeds(specs: list[TensorSpec], seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for a package: float standard normal, integers 0 or 1 (safe as
    ids and masks); symbolic dims take `dims[name]` or 1."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        if spec.dtype is None or spec.shape is None or any(d is None for d in spec.shape):
            raise DataError(f"input {spec.name!r} has no complete type ({spec.dtype}{spec.shape_text()}): "
                            "give inputs explicitly")
        shape = [d if isinstance(d, int) else (dims or {}).get(d, 1) for d in spec.shape]
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iub":
            feeds[spec.name] = rng.integers(0, 2, shape).astype(dtype)
        else:
            raise DataError(f"input {spec.name!r}: cannot make random {spec.dtype} data; give inputs explicitly")
    return feeds


def _pipeline_spec(pipeline: Optional[str], level: Optional[int]) -> str:
    """--pipeline or -O as pipeline text; a lone unknown preset fails here, before any
    work ("-O2,quantize-weights" is pipeline text that starts with a preset)."""
    if pipeline is not None and level is not None:
        raise typer.BadParameter("give --pipeline or -O, not both")
    spec = pipeline if pipeline is not None else f"-O{1 if level is None else level}"
    if spec.startswith("-O") and "," not in spec and spec not in PRESETS:
        raise typer.BadParameter(f"unknown preset {spec}; known: {', '.join(PRESETS)}")
    return spec


def _calibration(calib: Optional[str], calib_samples: Optional[int], model):
    """--calib DIR [--calib-samples N] as a Calibration for passes that need data."""
    if calib is None:
        if calib_samples is not None:
            raise typer.BadParameter("--calib-samples needs --calib DIR")
        return None
    from ..passes.calibration import Calibration

    return Calibration.from_source(calib, model=model, limit=calib_samples)


def _load_model(path: str):
    if path == "example":
        from .example import build_example

        return load(build_example())
    return load(path)


# ---------------------------------------------------------------- compile
def compile_cmd(
    model_path: str = typer.Argument(..., metavar="MODEL", help="ONNX file, or 'example'"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help=f"package to write (default: MODEL with {SUFFIX})"),
    target: str = typer.Option("x86", "-t", "--target", help="named target; `onnxforge targets` lists them"),
    pipeline: Optional[str] = typer.Option(None, "-p", "--pipeline", help="pipeline text, preset or file run before lowering"),
    level: Optional[int] = typer.Option(None, "-O", help="pipeline preset: -O0, -O1, -O2 (default -O1)"),
    input_shape: List[str] = typer.Option([], "--input-shape", help="pin an input's shape: NAME=D0,D1,... (repeatable)"),
    cpu_kernels: Optional[str] = typer.Option(None, "--cpu-kernels",
                                              help="CPU code: auto (default: blas when OpenBLAS is at hand), blas, schedule, tvm"),
    db: Optional[str] = typer.Option(None, "--db", help="apply this tuning database's records for the target (onnxforge tune)"),
    calib: Optional[str] = typer.Option(
        None, "--calib", help="folder of calibration samples (.npz per sample, or .npy) for passes that need data"),
    calib_samples: Optional[int] = typer.Option(None, "--calib-samples", help="use the first N calibration samples"),
    dequantize: str = typer.Option("run", "--dequantize",
                                   help="quantized weights: dequantize in every run (run: low memory) or once at load "
                                        "(load: float speed, float weights in memory)"),
    sign: Optional[str] = typer.Option(None, "--sign", help="sign the package with this private key (onnxforge keygen)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
):
    """Compile a model with TVM for a named target into one package file."""
    from ..codegen.compiler import compile as compile_model

    spec = _pipeline_spec(pipeline, level)
    shapes = parse_input_shapes(input_shape)
    resolved = resolve_target(target)  # fail on a bad target before loading anything
    out = Path(output) if output else Path("example" if model_path == "example" else model_path).with_suffix(SUFFIX)
    check_writable(str(out), "--output")
    model = _load_model(model_path)
    calibration = _calibration(calib, calib_samples, model)
    with err.status(f"compiling for {resolved.name}...", spinner="dots") if not as_json else _nothing():
        t0 = time.perf_counter()
        pkg = compile_model(model, target, spec, output=out, input_shapes=shapes or None, cpu_kernels=cpu_kernels,
                            db=db, calibration=calibration, dequantize=dequantize, sign_key=sign)
        seconds = time.perf_counter() - t0
    files = pkg.manifest["files"]
    report = {
        "output": str(pkg.path), "target": pkg.manifest["target"], "pipeline": pkg.manifest["pipeline"],
        "passes": pkg.manifest["passes"], "seconds": {**pkg.seconds, "total": seconds},
        "bytes": {"package": pkg.path.stat().st_size, **{name: f["bytes"] for name, f in files.items()}},
        "inputs": pkg.manifest["inputs"], "outputs": pkg.manifest["outputs"],
        "cpu_kernels": pkg.manifest.get("cpu_kernels"), "tuning": pkg.manifest.get("tuning"), "signed": sign is not None,
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    t = Table(title=escape(f"{model_path} -> {pkg.path}"))
    t.add_column("")
    t.add_column("")
    t.add_row("target", escape(f"{resolved.name}  {json.dumps(resolved.tvm)}"))
    t.add_row("pipeline", escape(f"{report['pipeline']} ({report['passes'] or 'no passes'})"))
    for kind in ("inputs", "outputs"):
        for spec in map(TensorSpec.from_json, report[kind]):
            t.add_row(kind[:-1], escape(f"{spec.name}: {spec.dtype}{spec.shape_text()}"))  # [batch,3,...] is not markup
    if report["cpu_kernels"]:
        t.add_row("cpu kernels", report["cpu_kernels"])
    if report["tuning"]:
        tuning = report["tuning"]
        t.add_row("tuning", escape(f"{tuning.get('kernels_tuned', 0)} of {tuning.get('kernels', '?')} kernels from {tuning['db']}"
                  if tuning["has_records"] else f"{tuning['db']} has no records for {resolved.name} ({tuning['target_key']})"))
    if sign:
        t.add_row("signed", escape(f"with {sign}"))
    t.add_row("sizes", ", ".join(f"{k} {human_bytes(v)}" for k, v in report["bytes"].items()))
    t.add_row("seconds", ", ".join(f"{k} {v:.2f}" for k, v in report["seconds"].items()))
    console.print(t)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


# ---------------------------------------------------------------- run
def _gather_inputs(pkg, input_items: List[str], inputs_npz: Optional[str]) -> tuple[dict[str, np.ndarray], bool]:
    feeds = load_inputs(inputs_npz) if inputs_npz else {}
    for item in input_items:
        name, eq, path = item.partition("=")
        if not eq or not name or not path:
            raise DataError(f"--input wants NAME=FILE.npy, got {item!r}")
        try:
            feeds[name] = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"--input {name}: cannot read {path}: {exc}") from None
    if feeds:
        return feeds, False
    return sample_feeds(pkg.inputs), True


def check_writable(path: str, option: str) -> None:
    """Refuse an output path whose folder is missing or read-only before any work is done."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise DataError(f"{option} {path}: the folder {folder} does not exist; create it or write elsewhere")
    if not os.access(folder, os.W_OK):
        raise DataError(f"{option} {path}: the folder {folder} is not writable; write elsewhere")
    if os.path.isdir(path):
        raise DataError(f"{option} {path} is a folder; give a file name")


def run_cmd(
    package: str = typer.Argument(..., metavar="PACKAGE", help="a package written by `onnxforge compile`"),
    input_items: List[str] = typer.Option([], "-i", "--input", help="NAME=FILE.npy (repeatable); default: random inputs"),
    inputs_npz: Optional[str] = typer.Option(None, "--inputs", help=".npz holding the inputs by name"),
    output: Optional[str] = typer.Option(None, "-o", "--output", help="write the outputs to this .npz"),
    repeat: int = typer.Option(1, "--repeat", help="run this many times and report the median latency"),
    trust: List[str] = typer.Option([], "--trust", help="run only if signed by this key (KEY.pub; repeatable)"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
):
    """Run a package with the runtime loader (numpy + TVM runtime) and print or save its outputs."""
    from ..codegen.runtime import load as load_package

    if repeat < 1:
        raise typer.BadParameter("--repeat must be at least 1")
    if output:
        check_writable(output, "--output")
    pkg = load_package(package, trusted_keys=trust or None)
    feeds, random = _gather_inputs(pkg, input_items, inputs_npz)
    if random and not as_json:
        shapes = ", ".join(f"{k}: {v.dtype.name}[{','.join(map(str, v.shape))}]" for k, v in feeds.items())
        err.print(escape(f"no inputs given: invented random inputs {shapes} (float: standard normal, integers: 0/1, "
                         "symbolic dims: 1); give real ones with --inputs file.npz or -i NAME=FILE.npy"), highlight=False)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        outputs = pkg(feeds)
        times.append(time.perf_counter() - t0)
    if output:
        try:
            np.savez(output, **outputs)
        except OSError as exc:
            raise DataError(f"cannot write the outputs to {output}: {exc.strerror or exc}") from None
    report = {
        "package": package, "target": pkg.target, "random_inputs": random,
        "inputs": {k: {"dtype": v.dtype.name, "shape": list(v.shape)} for k, v in feeds.items()},
        "outputs": {k: _stats(v) for k, v in outputs.items()},
        "latency_ms": {"median": statistics.median(times) * 1e3, "min": min(times) * 1e3, "runs": repeat},
        **({"output": output} if output else {}),
    }
    if as_json:
        print(json.dumps(report, indent=2))
        return
    t = Table(title=escape(f"{package} ({pkg.target})"))
    for col in ("output", "dtype", "shape", "min", "max", "mean"):
        t.add_column(col, justify="right" if col in ("min", "max", "mean") else "left")
    for name, s in report["outputs"].items():
        t.add_row(escape(name), s["dtype"], str(s["shape"]), *(f"{s[k]:.6g}" if s[k] is not None else "" for k in ("min", "max", "mean")))
    console.print(t)
    lat = report["latency_ms"]
    console.print(f"latency: median {lat['median']:.2f} ms, min {lat['min']:.2f} ms over {repeat} run(s)"
                  + (f"; outputs written to {escape(output)}" if output else ""))


def _stats(array: np.ndarray) -> dict:
    numeric = array.dtype.kind in "biuf" and array.size
    as_float = array.astype(np.float64) if numeric else None
    return {"dtype": array.dtype.name, "shape": list(array.shape),
            "min": float(as_float.min()) if numeric else None, "max": float(as_float.max()) if numeric else None,
            "mean": float(as_float.mean()) if numeric else None}


# ---------------------------------------------------------------- signing
def keygen_cmd(key: str = typer.Argument(..., metavar="KEY", help="private key file to write (KEY.pub beside it)")):
    """Make an ed25519 key pair for signing packages: KEY (private, keep it) and KEY.pub (give it to loaders)."""
    from ..codegen.signing import keygen

    check_writable(key, "KEY")
    private, public = keygen(key)
    console.print(escape(f"wrote {private} (private: sign with `onnxforge compile ... --sign {private}`) and "
                         f"{public} (public: load with `onnxforge run PACKAGE --trust {public}`)"))


def sign_cmd(package: str = typer.Argument(..., metavar="PACKAGE", help="a package written by `onnxforge compile`"),
             key: str = typer.Option(..., "--key", help="private key file (onnxforge keygen)")):
    """Sign a package in place (its checksums are verified first)."""
    from ..codegen.manifest import sign_package
    from ..codegen.signing import load_private_key

    load_private_key(key)
    sign_package(package, key)
    console.print(escape(f"signed {package} with {key}"))


# ---------------------------------------------------------------- targets
def targets_cmd(as_json: bool = typer.Option(False, "--json", help="print as JSON")):
    """List the named targets, what each resolves to here, and whether its linker is installed."""
    import shutil

    rows = []
    for name, target in TARGETS.items():
        example = "cuda-sm80" if name == "cuda" else name
        try:
            resolved = resolve_target(example)
            tvm_dict, linker, note = resolved.tvm, resolved.linker, ""
        except TargetError as exc:
            tvm_dict, linker, note = None, None, str(exc)
        linker_ok = None if linker is None else shutil.which(linker) is not None
        if linker_ok is False:
            note = f"{linker} missing: apt-get install g++-aarch64-linux-gnu"
        rows.append({"name": name, "example": example, "description": target.description, "options": target.options,
                     "tvm": tvm_dict, "linker": linker, "linker_installed": linker_ok, "note": note})
    if as_json:
        print(json.dumps({"targets": rows}, indent=2))
        return
    wide = Console(width=max(console.width, 140))  # TVM dicts are long; don't fold them
    t = Table(title="targets: --target NAME or NAME{option=value ...}")
    for col in ("target", "what it is", "TVM target here"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], r["description"] + (f"\n[yellow]{r['note']}" if r["note"] else ""),
                  json.dumps(r["tvm"]) if r["tvm"] else "")
    wide.print(t)
    for r in rows:
        wide.print(f"  {r['name']} options: " + "; ".join(f"{k} = {v}" for k, v in r["options"].items()), highlight=False)


# ---------------------------------------------------------------- compare
def compare_cmd(
    model_path: str = typer.Argument(..., metavar="MODEL", help="the ONNX model (reference: onnxruntime, no graph optimizations)"),
    package: str = typer.Argument(..., metavar="PACKAGE", help="a package compiled from it"),
    inputs_npz: Optional[str] = typer.Option(None, "--inputs", help=".npz with inputs (default: random, seeded)"),
    atol: float = typer.Option(1e-4, help="absolute tolerance"),
    rtol: float = typer.Option(1e-3, help="relative tolerance"),
    as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
):
    """Numeric diff between onnxruntime on MODEL and the compiled PACKAGE; exit 5 beyond tolerance."""
    from ..codegen.runtime import load as load_package

    pkg = load_package(package)
    model = _load_model(model_path)
    invented = None
    if inputs_npz:
        feeds = load_inputs(inputs_npz)
    else:  # sizes onnxruntime runs at; a package compiled pinned fixes its inputs' shapes
        pinned = {t.name: t.shape for t in pkg.inputs if t.shape is not None and all(isinstance(d, int) for d in t.shape)}
        invented = invent_inputs(model, shapes=pinned)
        feeds = invented.feeds
        invented.reference()  # raises, saying the inputs were invented, when onnxruntime cannot run them
        if not as_json:
            err.print(escape(invented.note()), highlight=False)
    t0 = time.perf_counter()
    ref = run_ort(model, feeds)
    ort_ms = (time.perf_counter() - t0) * 1e3
    t0 = time.perf_counter()
    got = pkg(feeds)
    compiled_ms = (time.perf_counter() - t0) * 1e3
    diff = compare_outputs(ref, got, atol, rtol)
    per_output = {}
    for (name, a), b in zip(ref.items(), got.values()):
        d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
        per_output[name] = float(d.max()) if d.size else 0.0
    report = {"model": model_path, "package": package, "target": pkg.target, "atol": atol, "rtol": rtol,
              **({"invented_inputs": {"shapes": {k: list(v) for k, v in invented.shapes.items()}, "dims": invented.dims}}
                 if invented is not None else {}),
              "max_abs": diff.max_abs, "max_rel": diff.max_rel, "ok": diff.ok, "worst_output": diff.worst_output,
              "max_abs_by_output": per_output, "ms": {"compiled_first_run": compiled_ms, "onnxruntime": ort_ms}}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        status = "[green]OK" if diff.ok else "[red]MISMATCH"
        console.print(escape(f"{model_path} vs {package} ({pkg.target}): max abs diff {diff.max_abs:.3g}, max rel diff "
                             f"{diff.max_rel:.3g} (worst: {diff.worst_output}; atol {atol}, rtol {rtol}): ") + status)
    if not diff.ok:
        raise NumericMismatchError(f"compiled outputs differ from onnxruntime beyond atol={atol} rtol={rtol}: {diff}")


__all__ = ["compile_cmd", "run_cmd", "targets_cmd", "compare_cmd", "parse_input_shapes", "sample_feeds"]
