"""Fuzz onnxforge the way an attacker and a careless user would: mutated models
through load -> optimize -O2 -> save, tampered and hostile packages through the
runtime loader, garbled pipelines through the pipeline parser.

    python -m onnxforge.tools.fuzz [--models N] [--packages N] [--pipelines N]
        [--ofrun N] [--seed S] [--timeout SECONDS] [--memory-mb MB] [--json out.json]

Each case runs in a worker subprocess under a memory limit (RLIMIT_AS) and a time
limit; a worker that dies (a signal, the time limit) is replaced and its case
counted. Every case is classified:
  ok          it went through (a saved model must pass onnx's checker; the input
              file must be unchanged)
  refused     an OnnxforgeError (one clear error, what users should get)
  BAD         anything else: another exception type, a crash, a hang, a memory
              blow-up, partial output left behind, the input modified.
  ran-changed-code  a package whose model.so bytes were changed (checksums
              recomputed) passed the loader's checks (ELF headers, a probe load in
              a forked child) and crashed running the changed code, at load (the
              weight transform) or at the call, or hung once it had loaded: a
              hostile build, which only a signature refuses. Counted apart, not as ok.
The report lists every BAD case with its mutation and message; the exit code is 1
if there is one. Mutants are deterministic for a seed.

Model mutations are protobuf-aware (dims, dtypes, op types, attributes, inputs and
outputs, opsets, IR version, raw data, names, duplicated or dropped nodes) or
byte-level (flips, truncation, insertions). Package mutations: truncated and
flipped archives, members cut or garbled with their checksums recomputed (anyone
can recompute them), hostile manifests (wrong types, missing fields, path names,
huge sizes), extra members (`../` names, symlinks), gzip bombs.
"""
from __future__ import annotations

import argparse
import copy
import functools
import gzip
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

DEFAULT_TIMEOUT = 120.0
DEFAULT_MEMORY_MB = 4096


# --------------------------------------------------------------------------- model mutants
def _seed_models() -> list[bytes]:
    import onnx
    from onnx import TensorProto, helper

    from .example import build_example

    mlp = helper.make_model(helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
         helper.make_node("Relu", ["a"], ["r"]), helper.make_node("Shape", ["r"], ["s"]),
         helper.make_node("Reshape", ["r", "s"], ["y"])], "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("w", TensorProto.FLOAT, [8, 4], [0.1] * 32),
         helper.make_tensor("b", TensorProto.FLOAT, [4], [0.5] * 4)]),
        opset_imports=[helper.make_opsetid("", 17)])
    return [build_example().SerializeToString(), mlp.SerializeToString(), onnx.ModelProto().SerializeToString()]


def _mutate_proto(model, rng: random.Random) -> str:
    """Change one thing in the ModelProto in place; returns what."""
    from onnx import AttributeProto, TensorProto

    g = model.graph
    nodes = list(g.node)
    tensors = list(g.initializer) + [a.t for n in nodes for a in n.attribute if a.type == AttributeProto.TENSOR]
    values = list(g.input) + list(g.output) + list(g.value_info)
    big = rng.choice([-1, 0, 2**31, 2**32, 2**62, -(2**40), 10**6])
    choice = rng.randrange(14)
    if choice == 0 and tensors:
        t = rng.choice(tensors)
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = big
        else:
            t.dims.append(big)
        return f"tensor {t.name!r} dim -> {big}"
    if choice == 1 and tensors:
        t = rng.choice(tensors)
        t.data_type = rng.choice([0, 2, 7, 8, 9, 10, 16, 17, 21, 22, 23, 99])
        return f"tensor {t.name!r} dtype -> {t.data_type}"
    if choice == 2 and tensors:
        t = rng.choice(tensors)
        raw = t.raw_data
        t.raw_data = raw[: rng.randrange(len(raw) + 1)] if raw and rng.random() < 0.5 else os.urandom(rng.randrange(64))
        return f"tensor {t.name!r} raw data cut or replaced"
    if choice == 3 and nodes:
        n = rng.choice(nodes)
        n.op_type = rng.choice(["Conv", "If", "Loop", "Scan", "LSTM", "Reshape", "NoSuchOp", "", "Add", "Resize"])
        return f"node {n.name!r} op -> {n.op_type!r}"
    if choice == 4 and nodes:
        n = rng.choice(nodes)
        if n.attribute:
            a = rng.choice(list(n.attribute))
            if a.type == AttributeProto.INT:
                a.i = big
            elif a.type == AttributeProto.INTS and a.ints:
                a.ints[rng.randrange(len(a.ints))] = big
            else:
                a.type = rng.choice([0, 1, 2, 3, 4, 6, 7, 13])
            return f"node {n.name!r} attribute {a.name!r} mutated"
        n.attribute.add(name=rng.choice(["axis", "perm", "pads", "to", "value"]), type=AttributeProto.INT, i=big)
        return f"node {n.name!r} attribute added"
    if choice == 5 and nodes:
        n = rng.choice(nodes)
        if n.input and rng.random() < 0.5:
            del n.input[rng.randrange(len(n.input))]
            return f"node {n.name!r} input dropped"
        n.input.append(rng.choice(["", "missing", g.output[0].name if g.output else "x"]))
        return f"node {n.name!r} input added"
    if choice == 6 and nodes:
        i = rng.randrange(len(nodes))
        if rng.random() < 0.5:
            del g.node[i]
            return f"node {i} dropped"
        g.node.add().CopyFrom(nodes[i])
        return f"node {i} duplicated (two producers)"
    if choice == 7 and len(nodes) > 1:
        i, j = rng.sample(range(len(nodes)), 2)
        a, b = copy.deepcopy(nodes[i]), copy.deepcopy(nodes[j])
        g.node[i].CopyFrom(b)
        g.node[j].CopyFrom(a)
        return f"nodes {i} and {j} swapped (order)"
    if choice == 8 and nodes:
        n = rng.choice(nodes)
        if n.output:
            n.output[0] = rng.choice([n.input[0] if n.input else "x", "", g.input[0].name if g.input else "y"])
            return f"node {n.name!r} output renamed (cycle / clash)"
    if choice == 9:
        if model.opset_import and rng.random() < 0.7:
            model.opset_import[0].version = rng.choice([0, 1, 6, 9, 30, 10**6, -3])
            return f"opset -> {model.opset_import[0].version}"
        model.ir_version = rng.choice([0, 1, 3, 99, -1])
        return f"ir_version -> {model.ir_version}"
    if choice == 10 and values:
        v = rng.choice(values)
        shape = v.type.tensor_type.shape
        if shape.dim:
            d = shape.dim[rng.randrange(len(shape.dim))]
            if rng.random() < 0.5:
                d.dim_value = big
            else:
                d.dim_param = rng.choice(["", "?", "-1", "a b", "batch"])
        else:
            v.type.tensor_type.elem_type = rng.choice([0, 8, 99])
        return f"value {v.name!r} type mutated"
    if choice == 11 and nodes:
        n = rng.choice(nodes)
        n.domain = rng.choice(["com.microsoft", "ai.onnx.ml", "unknown.domain", "../x"])
        return f"node {n.name!r} domain -> {n.domain!r}"
    if choice == 12 and tensors:
        t = rng.choice(tensors)
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        t.external_data.add(key="location", value=rng.choice(["../../etc/passwd", "/etc/passwd", "w.bin", ""]))
        if rng.random() < 0.5:
            t.external_data.add(key="length", value=str(big))
        return f"tensor {t.name!r} -> external data"
    if g.input:
        g.input[0].name = rng.choice(["", g.output[0].name if g.output else "y", "x" * 10000])
        return "graph input renamed"
    return "unchanged"


def model_mutant(seeds: list[bytes], index: int, seed: int) -> tuple[bytes, str]:
    import onnx

    rng = random.Random(seed * 1_000_003 + index)
    data = rng.choice(seeds)
    if rng.random() < 0.25:  # byte level
        b = bytearray(data)
        kind = rng.randrange(3)
        if kind == 0 and b:
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return bytes(b), "bytes flipped"
        if kind == 1:
            return bytes(b[: rng.randrange(len(b) + 1)]), "truncated"
        pos = rng.randrange(len(b) + 1)
        return bytes(b[:pos]) + os.urandom(rng.randint(1, 32)) + bytes(b[pos:]), "bytes inserted"
    model = onnx.ModelProto()
    model.ParseFromString(data)
    what = [_mutate_proto(model, rng) for _ in range(rng.randint(1, 3))]
    return model.SerializeToString(), "; ".join(what)


# --------------------------------------------------------------------------- package mutants
def _tar(members: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return buf.getvalue()


def repack_package(manifest_text: bytes, files: dict[str, bytes], extra=()) -> bytes:
    """A package (gzip bytes) with checksums recomputed over whatever it now holds,
    any manifest bytes (a manifest that is not a JSON object stays as it is)."""
    try:
        manifest = json.loads(manifest_text)
        if isinstance(manifest, dict):
            manifest["files"] = {k: {"sha256": hashlib.sha256(v).hexdigest(), "bytes": len(v)} for k, v in files.items()}
            manifest_text = json.dumps(manifest).encode()
    except ValueError:
        pass
    members = {"manifest.json": manifest_text,
               "manifest.sha256": (hashlib.sha256(manifest_text).hexdigest() + "\n").encode(), **files}
    return gzip.compress(_tar(members, list(extra)), compresslevel=1)


def package_members(original: bytes) -> dict[str, bytes]:
    """The members of a gzip package, by name."""
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(original))) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


@functools.lru_cache(maxsize=None)
def _bomb(size: int) -> bytes:
    """size zero bytes gzipped: a bomb, compressed once per size (~1 s each)."""
    return gzip.compress(bytes(size), compresslevel=1)


def package_mutant(original: bytes, index: int, seed: int) -> tuple[bytes, str]:
    rng = random.Random(seed * 1_000_033 + index)
    members = package_members(original)
    text = members.pop("manifest.json")
    members.pop("manifest.sha256")
    manifest = json.loads(text)
    kind = rng.randrange(9)
    if kind == 0:
        cut = rng.randrange(len(original))
        return original[:cut], f"archive truncated at {cut}"
    if kind == 1:
        b = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b), "archive bytes flipped"
    if kind == 2:
        lib = members["model.so"]
        members["model.so"] = lib[: rng.randrange(len(lib))]
        return repack_package(text, members), "model.so truncated, checksums recomputed"
    if kind == 3:
        lib = bytearray(members["model.so"])
        for _ in range(rng.randint(1, 16)):
            lib[rng.randrange(min(len(lib), 4096))] = rng.randrange(256)  # the ELF and program headers
        members["model.so"] = bytes(lib)
        return repack_package(text, members), "model.so headers garbled, checksums recomputed"
    if kind == 4:
        w = members["weights.npz"]
        members["weights.npz"] = w[: rng.randrange(len(w) + 1)] if rng.random() < 0.5 else os.urandom(len(w))
        return repack_package(text, members), "weights garbled, checksums recomputed"
    if kind == 5:  # hostile manifest fields
        field = rng.choice(["target", "inputs", "outputs", "params", "native_libraries", "format_version", "files",
                            "dequantize"])
        value = rng.choice([None, "x86", 7, [], [{}], {"name": 3}, [{"name": "x", "dtype": "__class__"}],
                            [{"soname": "../../lib/evil.so", "python_package": "scipy-openblas32"}],
                            [{"name": "p", "key": "p0", "dtype": "float32", "shape": [2**40, 2**40]}]])
        if rng.random() < 0.2:
            manifest.pop(field, None)
        else:
            manifest[field] = value
        return repack_package(json.dumps(manifest).encode(), members), f"manifest {field} -> {value!r}"[:160]
    if kind == 6:
        body = rng.choice([b"[1, 2]", b"null", b"{", b'"x"', json.dumps({"format": "onnxforge-package"}).encode()])
        return repack_package(body, members), f"manifest replaced by {body[:40]!r}"
    if kind == 7:
        extra = tarfile.TarInfo(rng.choice(["../evil.py", "/etc/x", "model.so", "link"]))
        if rng.random() < 0.5:
            extra.type, extra.linkname = tarfile.SYMTYPE, rng.choice(["/etc/passwd", "../../x", "model.so"])
        else:
            extra.size = 16
        return repack_package(text, members, [extra]), f"extra member {extra.name!r} ({'link' if extra.issym() else 'file'})"
    size = rng.choice([80 << 20, 200 << 20])  # a gzip bomb: megabytes of zeros in kilobytes
    return _bomb(size), f"gzip bomb ({size >> 20} MiB of zeros)"


# --------------------------------------------------------------------------- pipelines
_PIPE_ALPHABET = list("{}()=,- \"'\\x01") + ["cleanup", "fuse", "repeat", "max", "-O2", "cse", "fold-constants",
                                               "quantize-weights", "bits", "=4", "=-1", "=1e999", "=nan", "\u00e9"]


def pipeline_mutant(index: int, seed: int) -> str:
    rng = random.Random(seed * 1_000_037 + index)
    if rng.random() < 0.1:
        depth = rng.choice([40, 500, 3000])
        return "repeat{max=2}(" * depth + "cse" + ")" * depth
    return "".join(rng.choice(_PIPE_ALPHABET) for _ in range(rng.randint(1, 24)))


# --------------------------------------------------------------------------- worker
def _worker(memory_mb: int) -> None:
    """Read cases (JSON lines) from stdin, answer one JSON line each."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_mb << 20, memory_mb << 20))
    import warnings

    warnings.filterwarnings("ignore")
    import onnxforge
    from onnxforge.ir import OnnxforgeError
    from onnxforge.ir.onnx_io import check_model_file

    for line in sys.stdin:
        case = json.loads(line)
        result = {"status": "ok", "message": ""}
        try:
            if case["kind"] == "model":
                src, out = Path(case["path"]), Path(case["out"])
                before = src.read_bytes()
                model = onnxforge.load(src)
                result_model = onnxforge.optimize(model, "-O2").model
                onnxforge.save(result_model, out)
                problem = check_model_file(str(out))
                if problem is not None:
                    result = {"status": "BAD", "message": f"saved an invalid model: {problem}"}
                elif src.read_bytes() != before:
                    result = {"status": "BAD", "message": "the input file was modified"}
            elif case["kind"] == "package":
                pkg = onnxforge.runtime.load(case["path"])
                print(json.dumps({"stage": "loaded"}), flush=True)  # a crash from here on runs the library's code
                pkg(**{t.name: _zeros(t) for t in pkg.inputs})
            else:
                from onnxforge.passes.pipeline import resolve_pipeline

                resolve_pipeline(case["pipeline"]).validate()  # passes and options too
        except OnnxforgeError as exc:
            result = {"status": "refused", "message": f"{type(exc).__name__}: {str(exc)[:200]}"}
            if case["kind"] == "model" and Path(case["out"]).exists():
                result = {"status": "BAD", "message": f"partial output left after {type(exc).__name__}"}
        except BaseException as exc:  # noqa: BLE001 - the point: anything else is a finding
            result = {"status": "BAD", "message": f"{type(exc).__name__}: {str(exc)[:200]}"}
        print(json.dumps(result), flush=True)


def _zeros(spec):
    import numpy as np

    shape = [d if isinstance(d, int) and 0 <= d < 64 else 1 for d in (spec.shape or ())]
    return np.zeros(shape, np.dtype(spec.dtype or "float32"))


class _Pool:
    """One worker process at a time; replaced when it dies or hangs."""

    def __init__(self, timeout: float, memory_mb: int):
        self.timeout, self.memory_mb, self.proc = timeout, memory_mb, None

    def _start(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "onnxforge.tools.fuzz", "--worker", str(self.memory_mb)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1)

    def run(self, case: dict) -> dict:
        import selectors

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(case) + "\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        stage, deadline = "", time.monotonic() + self.timeout
        while True:
            ready = sel.select(max(0.0, deadline - time.monotonic()))
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                break
            answer = json.loads(line)
            if "stage" not in answer:
                sel.close()
                return answer
            stage = answer["stage"]
        sel.close()
        if not ready:  # still working after the time limit
            self.proc.kill()
        code = self.proc.wait()
        self.proc = None
        why = f"timeout after {self.timeout:.0f} s" if not ready else \
            f"worker died ({f'signal {-code}' if code < 0 else f'exit {code}'})"
        if case.get("code_changed") and (ready or stage):
            # model.so's bytes were changed and it passed the loader's checks (headers, the probe load in a
            # child), then crashed running its code: at load (the weight transform) or at the call; or, past
            # the load, never returned (its code is arbitrary now, and a crash inside TVM's thread pool or
            # its segfault handler can leave the process waiting: seen once in a full test run, on a garbled symbol
            # value). A hostile build, which only a signature refuses.
            return {"status": "ran-changed-code", "message": why + (" after the package loaded" if stage else "")}
        return {"status": "BAD", "message": why + (" after the package loaded" if stage else "")}

    def close(self):
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _example_package(folder: Path) -> bytes:
    import onnxforge

    from .example import build_example

    path = folder / "seed.ofpkg"
    onnxforge.compile(onnxforge.load(build_example()), target="x86", pipeline="-O1", output=path)
    return path.read_bytes()


def run(models: int, packages: int, pipelines: int, seed: int, timeout: float, memory_mb: int,
        progress=None) -> dict:
    """Run the cases; returns {"counts": {kind: {status: n}}, "bad": [case, ...], "seconds": s}."""
    start = time.perf_counter()
    counts: dict[str, dict[str, int]] = {}
    bad: list[dict] = []
    pool = _Pool(timeout, memory_mb)
    with tempfile.TemporaryDirectory(prefix="onnxforge-fuzz-") as tmp:
        folder = Path(tmp)
        cases = []
        if models:
            seeds = _seed_models()
            cases += [("model", i) for i in range(models)]
        original = _example_package(folder) if packages else b""
        cases += [("package", i) for i in range(packages)] + [("pipeline", i) for i in range(pipelines)]
        for n, (kind, i) in enumerate(cases):
            case = {"kind": kind}
            if kind == "model":
                data, what = model_mutant(seeds, i, seed)
                src = folder / f"m{i}" / "model.onnx"
                src.parent.mkdir()
                src.write_bytes(data)
                case.update(path=str(src), out=str(src.parent / "out.onnx"))
            elif kind == "package":
                data, what = package_mutant(original, i, seed)
                src = folder / f"p{i}.ofpkg"
                src.write_bytes(data)
                case.update(path=str(src), code_changed="model.so headers garbled" in what)
            else:
                case["pipeline"] = what = pipeline_mutant(i, seed)
            result = pool.run(case)
            counts.setdefault(kind, {}).setdefault(result["status"], 0)
            counts[kind][result["status"]] += 1
            if result["status"] == "BAD":
                bad.append({"kind": kind, "index": i, "mutation": what[:200], "message": result["message"]})
            if progress and (n + 1) % 100 == 0:
                progress(n + 1, len(cases), len(bad))
        pool.close()
    return {"seed": seed, "counts": counts, "bad": bad, "seconds": round(time.perf_counter() - start, 1)}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        _worker(int(argv[1]))
        return 0
    parser = argparse.ArgumentParser(prog="python -m onnxforge.tools.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=300)
    parser.add_argument("--packages", type=int, default=150)
    parser.add_argument("--pipelines", type=int, default=50)
    parser.add_argument("--ofrun", type=int, default=0,
                        help="package mutants through ofrun's checks built with ASan/UBSan (tools/fuzz_ofrun.py)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    parser.add_argument("--memory-mb", type=int, default=DEFAULT_MEMORY_MB)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    report = run(args.models, args.packages, args.pipelines, args.seed, args.timeout, args.memory_mb,
                 progress=lambda n, total, b: print(f"{n}/{total} cases, {b} BAD", file=sys.stderr, flush=True))
    if args.ofrun:
        from . import fuzz_ofrun

        try:
            native = fuzz_ofrun.run(args.ofrun, args.seed)
        except fuzz_ofrun.DriverUnavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        report["counts"]["ofrun"] = native["counts"]
        report["bad"] += [dict(b, kind="ofrun") for b in native["bad"]]
    for kind, c in report["counts"].items():
        print(f"{kind:9s} " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())))
    for b in report["bad"]:
        print(f"BAD {b['kind']} #{b['index']}: {b['mutation']} -> {b['message']}")
    print(f"{sum(sum(c.values()) for c in report['counts'].values())} cases, {len(report['bad'])} BAD, "
          f"{report['seconds']} s (seed {report['seed']})")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 1 if report["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
