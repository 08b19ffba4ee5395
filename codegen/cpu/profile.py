"""Per-kernel profile of a lowered model on this CPU: for each TIR kernel the
CPU pipeline produces, its call count, FLOPs, median time and GFLOP/s, each
kernel timed on its own (random inputs of its static shapes) with TVM's
time_evaluator. The sum approximates one model run (VM overhead excluded).

    python -m onnxforge.codegen.cpu.profile MODEL.onnx --mode blas --shape x=1,3,224,224 [--db tuned/]
"""
from __future__ import annotations

import collections
import os
import re
import tempfile

import numpy as np
import tvm
from tvm import relax

from .extern_calls import DW_BAND, DW_LANES

_SGEMM = re.compile(r'"onnxforge_sgemm", (\d+), (\d+), (\d+), (\d+)')
_PACKED = re.compile(r'"onnxforge_sgemm_packed", (\d+), (\d+), (\d+)')
# onnxforge_dwconv2d_plane(plane, c, h, w, oh, ow, kh, kw, ...), onnxforge_dwconv2d_block(task, ...) alike
# onnxforge_conv2d(nb, ci, h, w, co, oh, ow, kh, kw, ..., groups, ...)
_CONV = re.compile(r'"onnxforge_conv2d(_transpose)?", ' + ", ".join([r"(\d+)"] * 16))
# onnxforge_conv2d_packed(nb, ci, h, w, co, oh, ow, kh, kw, ...): groups 1
_CONV_PACKED = re.compile(r'"onnxforge_conv2d_packed", ' + ", ".join([r"(\d+)"] * 9))
_DWCONV = re.compile(r'"onnxforge_dwconv2d_(plane|block)", (?:T\.Cast\("int32", )?(?:plane|task)\)?, '
                     r'(\d+), (\d+), (\d+), (\d+), (\d+), (\d+), (\d+)')


def _kernel_module(mod, target, mode, database=None):
    from .pipeline import front_passes, lift_weight_transforms
    from .schedules import default_schedule_pass

    with target:
        passes = front_passes(target, mode)
        mod = tvm.transform.Sequential(passes[:1])(mod)
        # as the build does: weight packing moves to main_transform_params (once, at
        # load), so it is not timed as part of a run
        mod, _ = lift_weight_transforms(mod, "run")
        mod = tvm.transform.Sequential(passes[1:])(mod)
        tuned = set()
        if database is not None:
            with database:
                mod = relax.transform.MetaScheduleApplyDatabase()(mod)
            tuned = {gv.name_hint for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)
                     and f.attrs and f.attrs.get("tirx.is_scheduled", False)}
        return (default_schedule_pass()(mod) if mode != "tvm" else mod), tuned


def _int_arg(arg: str) -> int | None:
    """An integer argument as TIR prints it (7, T.int64(7), T.Cast("int32", T.int64(7))), else None."""
    arg = arg.strip()
    m = re.fullmatch(r'T\.Cast\("\w+", (.*)\)', arg)
    if m:
        return _int_arg(m.group(1))
    m = re.fullmatch(r"(?:T\.int(?:32|64)\()?(-?\d+)\)?", arg)
    return int(m.group(1)) if m else None


def _extern_ints(text: str, name: str, count: int) -> list | None:
    """The first `count` arguments of the call_extern of `name` in `text` as ints
    (None for one that is not a literal), or None when there is no such call."""
    call = re.search(rf'call_extern\("\w+", "{name}", ', text)  # not the name in an attribute
    if call is None:
        return None
    args, depth, start = [], 0, call.end()
    for i in range(start, len(text)):
        ch = text[i]
        if ch == "(":
            depth += 1
        elif ch in "),":
            if depth == 0:
                args.append(_int_arg(text[start:i]))
                if ch == ")" or len(args) == count:
                    break
                start = i + 1
            elif ch == ")":
                depth -= 1
    return args + [None] * (count - len(args))


# Per value: softmax max, subtract, exp, sum, scale; layer norm mean, subtract,
# square, sum, scale by 1/std, gamma, beta; max / min one compare (conventions: all
# are memory-bound).
_ROW_FLOPS = {"onnxforge_softmax_rows": 5, "onnxforge_layer_norm_rows": 7, "onnxforge_max_rows": 1,
              "onnxforge_min_rows": 1}
# gemm_int8.c: (m, n, k, ...); its integer multiply-adds count as two operations each
_INT8_GEMMS = ("onnxforge_qmatmul_packed", "onnxforge_qmatmul")
_RNN_GATES = {0: 1, 1: 3, 2: 4}  # recurrent.c's KIND_RNN, KIND_GRU, KIND_LSTM -> gates


def _c_kernel_flops(text: str) -> float | None:
    """FLOPs of kernels.c / recurrent.c calls: the row kernels per _ROW_FLOPS; the
    recurrence (onnxforge_rnn: kind, steps, batch, hidden, directions) as its hidden-state
    products, 2 * dirs * steps * batch * gates * hidden^2 (the input projection is a
    GEMM kernel of its own; the gates' elementwise work is not counted)."""
    for name, per in _ROW_FLOPS.items():
        args = _extern_ints(text, name, 2)
        if args is not None:
            return float(per * args[0] * args[1]) if None not in args else float("nan")
    for name in _INT8_GEMMS:
        args = _extern_ints(text, name, 3)
        if args is not None:
            return 2.0 * args[0] * args[1] * args[2] if None not in args else float("nan")
    args = _extern_ints(text, "onnxforge_rnn", 5)
    if args is not None:
        kind, steps, batch, hidden, dirs = args
        if None in args or kind not in _RNN_GATES:
            return float("nan")
        return 2.0 * dirs * steps * batch * _RNN_GATES[kind] * hidden * hidden
    return None


def _flops(func) -> float:
    text = func.script(show_meta=False)
    c_kernel = _c_kernel_flops(text)
    if c_kernel is not None:
        return c_kernel
    m = _SGEMM.search(text)
    if m:
        b, mm, n, k = (int(v) for v in m.groups())
        return 2.0 * b * mm * n * k
    m = _PACKED.search(text)
    if m:
        mm, n, k = (int(v) for v in m.groups())
        return 2.0 * mm * n * k
    m = _CONV.search(text)
    if m:
        nb, ci, h, w, co, oh, ow, kh, kw, *_, groups = (int(v) for v in m.groups()[1:])
        if m.group(1):  # transposed: every input value times its kh x kw taps per output channel
            return 2.0 * nb * ci * h * w * (co // groups) * kh * kw
        return 2.0 * nb * co * oh * ow * (ci // groups) * kh * kw
    m = _CONV_PACKED.search(text)
    if m:
        nb, ci, h, w, co, oh, ow, kh, kw = (int(v) for v in m.groups())
        return 2.0 * nb * co * oh * ow * ci * kh * kw
    m = _DWCONV.search(text)
    if m:
        c, _, _, oh, ow, kh, kw = (int(v) for v in m.groups()[1:])
        # the loop's extent: one call per (image, channel), or per (image, 16-channel block, band of 8 rows)
        calls = re.search(r"for (?:plane|task) in (?:T\.parallel|T\.serial|range)\((?:T\.int\d+\()?(\d+)", text)
        if not calls:
            return float("nan")
        planes = int(calls.group(1))
        if m.group(1) == "block":  # tasks = images x channel blocks x bands: back to images x channels
            planes = planes // -(-oh // DW_BAND) // -(-c // DW_LANES) * c
        return 2.0 * planes * oh * ow * kh * kw
    try:
        from tvm.s_tir.analysis import estimate_tir_flops

        return float(estimate_tir_flops(tvm.IRModule({"main": func})))
    except Exception:
        return float("nan")


def kernel_path(func) -> str:
    """Which code runs the kernel: gemm_int8.c's integer products, OpenBLAS (through onnxforge_sgemm, or conv.c's
    onnxforge_conv2d: im2col by blocks, onnxforge_conv2d_transpose: col2im), onnxforge's packed-weight GEMM
    or direct convolution over a packed weight (gemm_packed.c), one of its other C kernels (kernels.c /
    recurrent.c), or onnxforge's default schedule of TVM's TIR (kernel_table says
    "tuned" for those a tuning database scheduled)."""
    text = func.script(show_meta=False)
    if "onnxforge_qmatmul" in text:
        return "int8 GEMM"
    if "onnxforge_sgemm_packed" in text:
        return "packed GEMM"
    if "onnxforge_conv2d_packed" in text:
        return "packed conv (direct)"
    if "onnxforge_conv2d_transpose" in text:
        return "BLAS conv transpose (col2im)"
    if "onnxforge_conv2d" in text:
        return "BLAS conv (im2col by blocks)"
    if "onnxforge_sgemm_rows" in text:
        return "packed GEMM or BLAS (by rows)"
    if "onnxforge_sgemm" in text or "onnxforge_sgemv" in text:
        return "BLAS"
    if "call_extern" in text or "call_packed" in text:
        return "C kernel"
    return "TVM schedule"


def kernel_table(mod, target_dict, mode="blas", number=None, repeat=5, database=None, threads=None):
    """Each kernel of `mod` timed on its own on `threads` pool threads (default: the
    cores this process may use, as runtime.load sizes the pool; TVM's own default is
    half of them on x86, which made every row a one-thread figure on a 2-core host)."""
    from .. import host
    from ..runtime import set_threads

    set_threads(threads or host.cpu_count())
    target = tvm.target.Target(target_dict)
    mod, tuned = _kernel_module(mod, target, mode, database)
    calls = collections.Counter()
    signature = {}
    call_tir = tvm.ir.Op.get("relax.call_tir")

    def shape_dtype(sinfo):
        return [int(d) for d in sinfo.shape.values], str(sinfo.dtype.dtype)

    def visit(e):
        if isinstance(e, relax.Call) and e.op == call_tir:
            name = e.args[0].name_hint
            calls[name] += 1
            if name not in signature:
                outs = e.ty_args[0]
                outs = list(outs.fields) if isinstance(outs, relax.TupleType) else [outs]
                try:
                    signature[name] = [shape_dtype(a.ty) for a in e.args[1].fields] + [
                        shape_dtype(o) for o in outs]
                except Exception:  # noqa: BLE001 (symbolic shapes: not timed)
                    signature[name] = None

    relax.analysis.post_order_visit(mod["main"], visit)
    funcs = {gv.name_hint: f for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)}
    tir_mod = tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()})
    built = tvm.compile(tir_mod, target)
    from .pipeline import export_kwargs

    with tempfile.TemporaryDirectory() as tmp:
        so = os.path.join(tmp, "k.so")
        built.export_library(so, **export_kwargs(mode))
        lib = tvm.runtime.load_module(so)
    dev = tvm.cpu()
    rng = np.random.default_rng(0)
    rows = []
    for name, count in calls.items():
        f = funcs[name]
        args = []
        for shape, dt in signature[name] or []:
            a = rng.standard_normal(shape).astype(dt) if dt.startswith("float") else np.zeros(shape, dt)
            args.append(tvm.runtime.tensor(a, dev))
        flops = _flops(f)
        path = "tuned" if name in tuned else kernel_path(f)
        try:
            n = number or 1
            t = lib.time_evaluator(name, dev, number=n, repeat=repeat, min_repeat_ms=20)(*args).median
        except Exception:  # noqa: BLE001
            t = float("nan")
        rows.append(dict(kernel=name, path=path, calls=count, flops=flops, ms=t * 1e3, total_ms=t * 1e3 * count,
                         gflops=flops / t / 1e9 if t == t and t > 0 else float("nan")))
    rows.sort(key=lambda r: -r["total_ms"] if r["total_ms"] == r["total_ms"] else 0)
    return rows


def format_table(rows, top=25) -> str:
    total = sum(r["total_ms"] for r in rows if r["total_ms"] == r["total_ms"])
    lines = [f"{'kernel':44s} {'path':12s} {'calls':>5s} {'MFLOP':>9s} {'ms/call':>9s} {'ms total':>9s} {'%':>5s} "
             f"{'GFLOP/s':>8s}"]
    for r in rows[:top]:
        lines.append(f"{r['kernel'][:44]:44s} {r.get('path', ''):12s} {r['calls']:5d} {r['flops'] / 1e6:9.2f} "
                     f"{r['ms']:9.3f} {r['total_ms']:9.2f} {100 * r['total_ms'] / (total or 1):5.1f} {r['gflops']:8.2f}")
    flops = sum(r["flops"] * r["calls"] for r in rows if r["flops"] == r["flops"])
    lines.append(f"{'TOTAL (' + str(len(rows)) + ' kernels)':44s} {'':12s} {'':5s} {flops / 1e6:9.1f} {'':9s} "
                 f"{total:9.2f}")
    return "\n".join(lines)


def profile_model(model, pipeline: str = "-O2", shapes=None, db=None, mode: str = "blas",
                  threads=None) -> list[dict]:
    """kernel_table of `model` (an ir.Model) after `pipeline`, its inputs pinned to
    `shapes`, built for this x86 host; DataError when a dim stays symbolic (kernels
    are timed at static shapes) or `db` holds no records for the target."""
    from ...ir import DataError
    from ...passes import optimize
    from ..compiler import pin_input_shapes
    from ..lower import lower
    from ..targets import resolve_target

    if shapes:
        model = pin_input_shapes(model, shapes)
    open_dims = [f"{v.name}{list(v.shape)}" for v in model.graph.inputs
                 if not v.is_initializer and v.shape is not None and any(not isinstance(d, int) for d in v.shape)]
    if open_dims:
        raise DataError(f"kernels are timed at static shapes: pin {', '.join(open_dims)} with --shape NAME=D0,D1,...")
    lowered = lower(optimize(model, pipeline).model)
    target = resolve_target("x86")
    database = None
    if db:
        from ..tune_db import load_for

        database = load_for(db, target)
        if database is None:
            raise DataError(f"{db} holds no tuning records for {target.name}")
    from ..build import with_num_input

    # main's parameters past the inputs are weights, as in a build (blas.py packs them)
    return kernel_table(with_num_input(lowered.mod, len(lowered.inputs)), target.tvm, mode, database=database,
                        threads=threads)


def main(argv=None):
    import argparse

    from ...ir import load

    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--mode", default="blas")
    ap.add_argument("--pipeline", default="-O2")
    ap.add_argument("--shape", action="append", default=[])
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--db", help="apply this tuning database (onnxforge tune) first")
    ap.add_argument("--threads", type=int, help="pool threads (default: the cores this process may use)")
    a = ap.parse_args(argv)
    shapes = {s.split("=")[0]: [int(d) for d in s.split("=")[1].split(",")] for s in a.shape}
    print(format_table(profile_model(load(a.model), a.pipeline, shapes, a.db, a.mode, a.threads), a.top))


if __name__ == "__main__":
    main()
