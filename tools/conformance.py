"""Conformance through the compiler: onnx's own node test cases, run through
onnxruntime and through `onnxforge.compile(model, target="x86", pipeline="-O0")`.

    python -m onnxforge.tools.conformance [--ops Add,Conv] [--limit N]
        [--sample N --seed S] [--timeout SECONDS] [--jobs N] [--json out.json]

Each case (`onnx.backend.test.case.node.collect_testcases()`) carries a model and
data sets of inputs with expected outputs; outputs are compared the way onnx's
backend test runner does (same shape, same dtype, np.testing.assert_allclose with
the case's rtol/atol, 1e-3 / 1e-7 by default). Symbolic input dims are pinned to the
test data's shapes (so are dims declared 0, which the loader reads as open). Per case the compiled result is one of:

    pass            every data set matches
    mismatch        ran, but an output differs (shape, dtype or values)
    lowering-error  onnxforge.ir.LoweringError (an op or form without a lowering)
    compile-error   any other error while optimizing / lowering / building
    run-error       the package was built but failed to run
    unsupported     the case needs what a package cannot take (sequence / optional inputs)
    timeout         the case took longer than --timeout (worker killed)
    crash           the worker process died (segfault, abort)

onnxruntime's own result (pass / mismatch / error) is recorded too; the headline
figure is compiled-pass among the cases onnxruntime passes. Cases run in worker
subprocesses (one case at a time each), so a crash or hang costs one case.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import io
import json
import os
import random
import select
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from typing import Any

import numpy as np

STATUSES = ("pass", "mismatch", "lowering-error", "compile-error", "run-error", "unsupported", "timeout", "crash")
DEFAULT_TIMEOUT = 180.0


# --------------------------------------------------------------------------- cases


def collect_cases() -> dict[str, Any]:
    """name -> onnx TestCase (node cases that carry their model, not downloads)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            cases = collect_testcases()
    return {c.name: c for c in cases if c.model is not None and c.data_sets}


def case_ops(case) -> list[str]:
    """The op types the case's graph uses (Constant excluded unless alone)."""
    ops = [n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}" for n in case.model.graph.node]
    real = [op for op in ops if op != "Constant"] or ops
    return list(dict.fromkeys(real))


def select_cases(names: list[str], cases: dict[str, Any], ops: list[str] | None, limit: int | None,
                 sample: int | None, seed: int) -> list[str]:
    if ops:
        wanted = {o.lower() for o in ops}
        names = [n for n in names if any(o.lower() in wanted for o in case_ops(cases[n]))]
    if sample is not None and sample < len(names):
        names = sorted(random.Random(seed).sample(names, sample))
    if limit is not None:
        names = names[:limit]
    return names


# --------------------------------------------------------------------------- comparison


def _compare(expected: list, got: list, rtol: float, atol: float) -> str | None:
    """None when `got` matches like onnx's runner, else what differs (one line)."""
    if len(got) != len(expected):
        return f"{len(got)} outputs, expected {len(expected)}"
    for i, (ref, out) in enumerate(zip(expected, got)):
        if isinstance(ref, (list, tuple)):  # a sequence output: element by element, like onnx's runner
            if not isinstance(out, (list, tuple)):
                return f"output {i}: {type(out).__name__}, expected a sequence"
            why = _compare(list(ref), list(out), rtol, atol)
            if why:
                return f"output {i}: {why}"
            continue
        if ref is None or out is None:
            if ref is None and out is None:
                continue
            return f"output {i}: optional output {'missing' if out is None else 'present'}"
        out = np.asarray(out)
        ref = np.asarray(ref)
        if tuple(out.shape) != tuple(ref.shape):
            return f"output {i}: shape {list(out.shape)}, expected {list(ref.shape)}"
        if ref.dtype == object:
            if not np.array_equal(out, ref):
                return f"output {i}: strings differ"
            continue
        if out.dtype != ref.dtype:
            return f"output {i}: dtype {out.dtype}, expected {ref.dtype}"
        r = rtol
        if out.dtype.name == "bfloat16":
            r = max(rtol, 2 ** -6)
            out, ref = out.astype(np.float32), ref.astype(np.float32)
        try:
            np.testing.assert_allclose(out, ref, rtol=r, atol=atol)
        except AssertionError:
            with np.errstate(all="ignore"):
                if ref.dtype.kind in "fc" or out.dtype.kind in "fc":
                    diff = np.nanmax(np.abs(out.astype(np.float64) - ref.astype(np.float64))) if ref.size else 0
                else:
                    diff = int(np.sum(out != ref))
                    return f"output {i}: {diff} of {ref.size} elements differ"
            return f"output {i}: max abs diff {float(diff):.3g} (rtol {r:g}, atol {atol:g})"
        except TypeError as exc:
            return f"output {i}: cannot compare: {exc}"
    return None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    # TVM errors: a C++ traceback, then the message on the last lines
    line = lines[-1] if len(lines) > 6 else (lines[0] if lines else type(exc).__name__)
    line = f"{type(exc).__name__}: {line}"
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _is_tensor(x) -> bool:
    return isinstance(x, np.ndarray) or np.isscalar(x)


# --------------------------------------------------------------------------- one case


def run_ort(case) -> tuple[str, str]:
    import onnxruntime as ort

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(case.model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        for inputs, expected in case.data_sets:
            feeds = dict(zip(names, inputs))
            got = sess.run(None, feeds)
            why = _compare(list(expected), got, case.rtol, case.atol)
            if why:
                return "mismatch", why
    except Exception as exc:  # noqa: BLE001  (onnxruntime's verdict, recorded)
        return "error", _first_line(exc)
    return "pass", ""


# Relax ops (and calls) that the default CPU kernel mode ("blas") sends to OpenBLAS
# or onnxforge's C kernels; a module without them compiles to the same code under
# "schedule", without linking the C kernels and OpenBLAS that "blas" adds to every build.
_BLAS_MARKERS = ("R.matmul", "R.nn.conv", "R.nn.attention", "call_dps_packed", "ExternFunc", "call_extern",
                 "call_packed")


def cpu_kernels_for(model, pipeline: str, shapes) -> str | None:
    """None (the default mode) when the lowered module has work for the BLAS /
    C-kernel path, else "schedule"; None too when lowering fails (compile reports it)."""
    from onnxforge.codegen.compiler import prepare

    try:
        _, _, _, lowered = prepare(model, pipeline, shapes or None, {})
        text = lowered.mod.script()
    except Exception:  # noqa: BLE001
        return None
    return None if any(m in text for m in _BLAS_MARKERS) else "schedule"


def run_compiled(case, pipeline: str = "-O0", fast_kernels: bool = True) -> tuple[str, str]:
    import onnxforge
    from onnxforge.ir import LoweringError, from_proto

    model = case.model
    graph_inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    for inputs, _ in case.data_sets:
        if not all(_is_tensor(x) for x in inputs):
            return "unsupported", "sequence / optional inputs"
    # pin symbolic dims from the first data set
    shapes = {}
    first = case.data_sets[0][0]
    for vi, arr in zip(graph_inputs, first):
        dims = vi.type.tensor_type.shape.dim
        # open dims: no dim_value, and dim_value 0 (the loader reads a 0 on a graph
        # input as open, as Paddle writes them), pinned to the data's extents
        if any(not d.HasField("dim_value") or d.dim_value <= 0 for d in dims) or len(dims) != np.ndim(arr):
            shapes[vi.name] = tuple(np.shape(arr))
    same_shapes = all(tuple(np.shape(a)) == tuple(np.shape(b)) for inputs, _ in case.data_sets
                      for a, b in zip(inputs, first))
    with tempfile.TemporaryDirectory(prefix="onnxforge-conf-") as tmp:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                kernels = cpu_kernels_for(from_proto(model), pipeline, shapes) if fast_kernels else None
                pkg = onnxforge.compile(from_proto(model), target="x86", pipeline=pipeline, output=os.path.join(tmp, "m.ofpkg"),
                                        input_shapes=shapes or None, cpu_kernels=kernels)
        except LoweringError as exc:
            return "lowering-error", _first_line(exc)
        except Exception as exc:  # noqa: BLE001
            return "compile-error", _first_line(exc)
        out_names = [o.name for o in model.graph.output]
        for inputs, expected in case.data_sets:
            if not same_shapes and shapes:
                return "unsupported", "data sets of different shapes with symbolic dims"
            try:
                feeds = {vi.name: np.asarray(x) for vi, x in zip(graph_inputs, inputs)}
                result = pkg(feeds)
                got = [result[n] for n in out_names]
            except Exception as exc:  # noqa: BLE001
                return "run-error", _first_line(exc)
            why = _compare(list(expected), got, case.rtol, case.atol)
            if why:
                return "mismatch", why
    return "pass", ""


def run_case(case, pipeline: str = "-O0") -> dict[str, Any]:
    t0 = time.perf_counter()
    ort_status, ort_detail = run_ort(case)
    status, detail = run_compiled(case, pipeline)
    return {"case": case.name, "ops": case_ops(case), "ort": ort_status, "ort_detail": ort_detail,
            "status": status, "detail": detail, "seconds": round(time.perf_counter() - t0, 2)}


# --------------------------------------------------------------------------- workers


def _worker_main(pipeline: str) -> None:
    """Read case names on stdin, write one JSON line per case on the original stdout
    (fd 1 is redirected to stderr so that native prints cannot corrupt the stream)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    cases = collect_cases()
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        try:
            result = run_case(cases[name], pipeline)
        except BaseException as exc:  # noqa: BLE001  (report, keep serving)
            traceback.print_exc()
            result = {"case": name, "ops": case_ops(cases[name]) if name in cases else [], "ort": "?",
                      "ort_detail": "", "status": "crash", "detail": _first_line(exc), "seconds": 0}
        out.write(json.dumps(result) + "\n")


class _Worker:
    def __init__(self, pipeline: str, log):
        env = dict(os.environ, PYTHONWARNINGS="ignore", TVM_NUM_THREADS=os.environ.get("TVM_NUM_THREADS", "1"))
        self.proc = subprocess.Popen([sys.executable, "-m", "onnxforge.tools.conformance", "--worker",
                                      f"--pipeline={pipeline}"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        self.case: str | None = None
        self.started = 0.0
        self.ready = False
        self._buf = ""

    def send(self, name: str) -> None:
        self.case, self.started = name, time.monotonic()
        self.proc.stdin.write(name + "\n")
        self.proc.stdin.flush()

    def read_line(self) -> str | None:
        """One complete line if available without blocking (None otherwise; '' at EOF)."""
        while "\n" not in self._buf:
            if not select.select([self.proc.stdout], [], [], 0)[0]:
                return None
            chunk = os.read(self.proc.stdout.fileno(), 65536)
            if not chunk:
                return ""
            self._buf += chunk.decode()
        line, self._buf = self._buf.split("\n", 1)
        return line

    def kill(self) -> None:
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(timeout=10)


def run_cases(names: list[str], cases: dict[str, Any], *, jobs: int = 1, timeout: float = DEFAULT_TIMEOUT,
              pipeline: str = "-O0", progress=None, log=None) -> list[dict[str, Any]]:
    """Run the named cases in `jobs` worker subprocesses; results in `names` order."""
    log = log if log is not None else subprocess.DEVNULL
    pending = collections.deque(names)
    results: dict[str, dict[str, Any]] = {}
    workers: list[_Worker] = []

    def spawn():
        w = _Worker(pipeline, log)
        w.started = time.monotonic()
        workers.append(w)

    for _ in range(min(jobs, len(names))):
        spawn()
    try:
        while len(results) < len(names):
            for w in list(workers):
                if w.ready and w.case is None and pending:
                    w.send(pending.popleft())
            if not workers and pending:
                spawn()
            streams = {w.proc.stdout: w for w in workers}
            ready, _, _ = select.select(list(streams), [], [], 1.0)
            for stream in ready:
                w = streams[stream]
                while True:
                    line = w.read_line()
                    if line is None:
                        break
                    if line == "":  # the worker died
                        w.proc.wait()
                        if w.case is not None:
                            results[w.case] = _lost(w.case, cases, "crash",
                                                    f"worker exited with code {w.proc.returncode}")
                            _report(progress, results[w.case], len(results), len(names))
                        elif not w.ready:
                            raise RuntimeError(f"conformance worker failed to start (exit code {w.proc.returncode})")
                        workers.remove(w)
                        if pending:
                            spawn()
                        break
                    msg = json.loads(line)
                    if msg.get("ready"):
                        w.ready = True
                        w.case = None
                        continue
                    results[msg["case"]] = msg
                    _report(progress, msg, len(results), len(names))
                    w.case = None
                    if pending:
                        w.send(pending.popleft())
            now = time.monotonic()
            for w in list(workers):
                if w.case is not None and now - w.started > timeout:
                    w.kill()
                    results[w.case] = _lost(w.case, cases, "timeout", f"no result within {timeout:g} s")
                    _report(progress, results[w.case], len(results), len(names))
                    workers.remove(w)
                    if pending:
                        spawn()
    finally:
        for w in workers:
            with contextlib.suppress(Exception):
                w.proc.stdin.close()
            w.kill()
    return [results[n] for n in names]


def _lost(name: str, cases, status: str, detail: str) -> dict[str, Any]:
    return {"case": name, "ops": case_ops(cases[name]), "ort": "?", "ort_detail": "", "status": status,
            "detail": detail, "seconds": None}


def _report(progress, result, done, total):
    if progress is not None:
        progress(result, done, total)


# --------------------------------------------------------------------------- summary


def summarize(results: list[dict[str, Any]]) -> dict[str, Any]:
    ort_pass = [r for r in results if r["ort"] == "pass"]
    compiled_pass = [r for r in ort_pass if r["status"] == "pass"]
    by_status = collections.Counter(r["status"] for r in ort_pass)
    # failing ops, by cause, among the cases onnxruntime passes
    failing: dict[str, dict[str, list[str]]] = {}
    for r in ort_pass:
        if r["status"] == "pass":
            continue
        for op in r["ops"][:1] or ["?"]:
            failing.setdefault(r["status"], {}).setdefault(op, []).append(r["case"])
    return {
        "cases_tried": len(results),
        "ort_pass": len(ort_pass),
        "compiled_pass": len(compiled_pass),
        "compiled_pass_all": sum(r["status"] == "pass" for r in results),
        "percent": round(100.0 * len(compiled_pass) / len(ort_pass), 1) if ort_pass else None,
        "by_status": dict(by_status),
        "failing_ops": {status: dict(sorted(ops.items(), key=lambda kv: -len(kv[1])))
                        for status, ops in failing.items()},
    }


def format_summary(summary: dict[str, Any], results: list[dict[str, Any]] | None = None) -> str:
    lines = [f"cases tried: {summary['cases_tried']}",
             f"onnxruntime pass: {summary['ort_pass']}",
             f"compiled pass among those: {summary['compiled_pass']} ({summary['percent']}%)"
             f"  [compiled pass overall: {summary['compiled_pass_all']}]",
             "by status (onnxruntime-pass cases): " + ", ".join(f"{k} {v}" for k, v in
                                                                  sorted(summary["by_status"].items()))]
    details = {r["case"]: r["detail"] for r in results or []}
    for status, ops in summary["failing_ops"].items():
        lines.append(f"\n{status} ({sum(len(v) for v in ops.values())} cases):")
        for op, names in ops.items():
            example = details.get(names[0], "")
            lines.append(f"  {op:28s} {len(names):4d}  e.g. {names[0]}: {example[:140]}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m onnxforge.tools.conformance", description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", help="only cases whose graph uses one of these ops (comma-separated)")
    p.add_argument("--cases", help="only these case names (comma-separated)")
    p.add_argument("--limit", type=int, help="at most N cases (after --ops / --sample)")
    p.add_argument("--sample", type=int, help="a random sample of N cases")
    p.add_argument("--seed", type=int, default=0, help="seed for --sample (default 0)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per case (default %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--pipeline", default="-O0", help="pipeline for onnxforge.compile (default -O0)")
    p.add_argument("--json", help="write every result and the summary to this file")
    p.add_argument("--quiet", action="store_true", help="no per-case lines")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker_main(args.pipeline)
        return 0

    cases = collect_cases()
    names = sorted(cases)
    if args.cases:
        wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [c for c in wanted if c not in cases]
        if unknown:
            print(f"error: unknown case(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        names = wanted
    names = select_cases(names, cases, args.ops.split(",") if args.ops else None, args.limit, args.sample, args.seed)
    if not names:
        print("no cases selected", file=sys.stderr)
        return 2
    print(f"running {len(names)} cases ({args.jobs} worker(s), {args.timeout:g} s each, pipeline {args.pipeline})",
          file=sys.stderr, flush=True)

    def progress(r, done, total):
        if not args.quiet:
            extra = f"  {r['detail'][:160]}" if r["status"] != "pass" else ""
            print(f"[{done}/{total}] {r['case']}: ort {r['ort']}, compiled {r['status']}{extra}", flush=True)

    log_path = os.environ.get("ONNXFORGE_CONFORMANCE_LOG")
    with (open(log_path, "a") if log_path else contextlib.nullcontext(subprocess.DEVNULL)) as log:
        results = run_cases(names, cases, jobs=args.jobs, timeout=args.timeout, pipeline=args.pipeline,
                            progress=progress, log=log)
    summary = summarize(results)
    print()
    print(format_summary(summary, results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": summary, "results": results, "pipeline": args.pipeline}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
