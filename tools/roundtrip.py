"""Round-trip check: load -> save through the IR must give a model that
onnx.checker accepts and that onnxruntime runs with bitwise identical outputs.

    python -m onnxforge.tools.roundtrip            # onnx backend light models + node tests
    python -m onnxforge.tools.roundtrip a.onnx ... # given files
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import onnx

from ..ir import load, save
from ..passes.check import ort_session


@dataclasses.dataclass
class RoundTrip:
    name: str
    status: str  # "identical", "differs", "error", "ort-cannot-run-original"
    detail: str = ""
    proto_identical: bool = False


def _inputs(session, given: list[dict] | None) -> dict[str, np.ndarray]:
    if given:
        return given[0]
    rng = np.random.default_rng(0)
    feeds = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in inp.shape]
        kind = inp.type
        if "float" in kind:
            dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}.get(kind, np.float32)
            feeds[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif "int" in kind:
            dtype = np.dtype(kind[len("tensor("):-1]) if kind[len("tensor("):-1] in ("int8", "int16", "int32", "int64", "uint8") else np.int64
            feeds[inp.name] = rng.integers(0, 2, shape).astype(dtype)
        elif kind == "tensor(bool)":
            feeds[inp.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            raise ValueError(f"no random data for input {inp.name} of type {kind}")
    return feeds


def _same(a, b) -> bool:
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))  # bitwise, NaNs included
    return bool(np.array_equal(a, b))


def check_file_or_proto(name: str, source, inputs: list[dict] | None = None) -> RoundTrip:
    """Load `source` (path or ModelProto), save it through the IR, compare."""
    with tempfile.TemporaryDirectory() as tmp:
        original = source if isinstance(source, onnx.ModelProto) else onnx.load_model(source)
        try:
            model = load(source)
            out_path = os.path.join(tmp, "roundtrip.onnx")
            save(model, out_path)
            saved = onnx.load_model(out_path)
            onnx.checker.check_model(saved)
        except Exception as exc:
            return RoundTrip(name, "error", f"{type(exc).__name__}: {exc}"[:300])
        identical = saved.SerializeToString(deterministic=True) == original.SerializeToString(deterministic=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref_sess = ort_session(original)
                feeds = _inputs(ref_sess, inputs)
                ref = ref_sess.run(None, feeds)
        except Exception as exc:
            return RoundTrip(name, "ort-cannot-run-original", f"{exc}"[:200], identical)
        try:
            got = ort_session(saved).run(None, feeds)
        except Exception as exc:
            return RoundTrip(name, "error", f"onnxruntime fails on the saved model: {exc}"[:300], identical)
        same = len(ref) == len(got) and all(_same(a, b) for a, b in zip(ref, got))
        return RoundTrip(name, "identical" if same else "differs", "" if same else "outputs differ", identical)


def backend_models() -> list[tuple[str, object, list[dict] | None]]:
    """The onnx package's light models and its node test cases (built in code)."""
    import onnx.backend.test.case.node as node_cases

    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data")
    items: list[tuple[str, object, list[dict] | None]] = []
    for path in sorted(glob.glob(os.path.join(root, "light", "*.onnx"))):
        items.append((os.path.basename(path), path, None))
    for folder in ("simple", "pytorch-converted", "pytorch-operator", "real"):
        for path in sorted(glob.glob(os.path.join(root, folder, "*", "model.onnx"))):
            items.append((f"{folder}/{os.path.basename(os.path.dirname(path))}", path, None))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in node_cases.collect_testcases(None):
            inputs = None
            if case.data_sets:
                names = [i.name for i in case.model.graph.input]
                feeds = dict(zip(names, case.data_sets[0][0]))
                if all(isinstance(v, np.ndarray) for v in feeds.values()):
                    inputs = [feeds]
            items.append((f"node/{case.name}", case.model, inputs))
    return items


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", help="ONNX files (default: the onnx backend test models)")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = parser.parse_args(argv)
    import onnxruntime

    onnxruntime.set_default_logger_severity(4)
    items = [(p, p, None) for p in args.models] if args.models else backend_models()
    counts: dict[str, int] = {}
    proto_same = 0
    start = time.perf_counter()
    failures = []
    for name, source, inputs in items:
        result = check_file_or_proto(name, source, inputs)
        counts[result.status] = counts.get(result.status, 0) + 1
        proto_same += result.proto_identical
        if result.status in ("error", "differs"):
            failures.append(result)
        if args.verbose or result.status in ("error", "differs"):
            print(f"{result.status:<24} {name} {result.detail}")
    print(f"{len(items)} models in {time.perf_counter() - start:.1f} s: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"saved protobuf byte-identical to the original: {proto_same}/{len(items)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
