"""Recurrent layers: ONNX RNN, GRU, LSTM and com.microsoft DynamicQuantizeLSTM.

TVM 0.27's ONNX frontend has none of them. Each becomes
- one GEMM for the input projection of every timestep at once (X @ W^T + the
  biases that add outside the recurrence), a plain relax matmul that the CPU
  pipeline sends to OpenBLAS like any dense layer, with symbolic sequence length
  and batch;
- one call of `onnxforge_rnn` (codegen/cpu/recurrent.c) for the recurrence: per
  timestep a GEMM of the hidden state with R through the same sgemm path, then the
  gates. It needs the CPU kernels (cpu_kernels="blas", the default on x86/arm64).
  Builds without them (GPU targets, cpu_kernels="schedule"/"tvm": compile() says so
  through `use_extern_kernels`) get the recurrence unrolled into Relax ops instead,
  which needs a sequence length known at compile time; codegen/build.py refuses a
  module that calls the C kernels but will not link them (EXTERN_ATTR).

DynamicQuantizeLSTM computes as onnxruntime does: X and, at every step, the hidden
state quantized to uint8 over the whole tensor; products of (q - zero_point) are
exact in float32; per-column scales applied to the sums.
"""
from __future__ import annotations

import contextlib
import contextvars

import numpy as np
import tvm
from tvm import relax, te, tirx

from ..ir import LoweringError
from .registry import register_lowering

# The codes recurrent.c's activate() takes, in its order; alpha/beta defaults as onnxruntime uses them.
ACTIVATIONS = ("sigmoid", "tanh", "relu", "hardsigmoid", "affine", "leakyrelu", "thresholdedrelu", "scaledtanh",
               "elu", "softsign", "softplus")
_USES_ALPHA = {"affine", "leakyrelu", "thresholdedrelu", "scaledtanh", "hardsigmoid", "elu"}
_USES_BETA = {"affine", "scaledtanh", "hardsigmoid"}
_DEFAULTS = {"leakyrelu": (0.01, 0.0), "hardsigmoid": (0.2, 0.5), "elu": (1.0, 0.0)}
_KINDS = {"RNN": (0, 1, ("Tanh",)), "GRU": (1, 3, ("Sigmoid", "Tanh")), "LSTM": (2, 4, ("Sigmoid", "Tanh", "Tanh"))}
# PrimFunc attribute marking kernels that call recurrent.c (only CPU builds with the C kernels link it)
EXTERN_ATTR = "onnxforge.extern_kernel"
_EXTERN = contextvars.ContextVar("onnxforge_recurrent_extern", default=True)


@contextlib.contextmanager
def use_extern_kernels(enabled: bool):
    """Lower recurrences to recurrent.c (True, the default) or unrolled Relax ops (False)."""
    token = _EXTERN.set(bool(enabled))
    try:
        yield
    finally:
        _EXTERN.reset(token)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _activation_table(node, kind: str, dirs: int) -> np.ndarray:
    """[dirs, 3, 3] float32: (code, alpha, beta) of f, g, h per direction."""
    _, _, defaults = _KINDS[kind]
    names = [_text(a).lower() for a in node.attributes.get("activations", [])] or [d.lower() for d in defaults] * dirs
    per_dir = len(defaults)
    if len(names) == per_dir and dirs == 2:
        names = names * 2
    if len(names) != per_dir * dirs:
        raise LoweringError(f"{kind} with direction={'bidirectional' if dirs == 2 else 'forward'} takes {per_dir * dirs} "
                            f"activations, got {len(names)}: {names}")
    alphas = list(node.attributes.get("activation_alpha", []))
    betas = list(node.attributes.get("activation_beta", []))
    table = np.zeros((dirs, 3, 3), np.float32)
    for i, name in enumerate(names):
        if name not in ACTIVATIONS:
            raise LoweringError(f"{kind} activation {name!r} is not one of {', '.join(ACTIVATIONS)}")
        alpha, beta = _DEFAULTS.get(name, (0.0, 0.0))
        if name in _USES_ALPHA and alphas:
            alpha = alphas.pop(0)
        if name in _USES_BETA and betas:
            beta = betas.pop(0)
        table[i // per_dir, i % per_dir] = (ACTIVATIONS.index(name), alpha, beta)
    return table


def _input(inputs, i):
    return inputs[i] if len(inputs) > i and inputs[i] is not None else None


def _shape(bb, expr):
    expr = bb.normalize(expr)
    ty = expr.ty
    if not isinstance(ty, relax.TensorType) or not isinstance(ty.shape, relax.ShapeExpr):
        return expr, None
    return expr, [int(d.value) if isinstance(d, tirx.IntImm) else d for d in ty.shape.values]


def _slice(bb, x, d: int):
    """x[d]: the first axis dropped (a direction's weights or state)."""
    op = relax.op
    x, dims = _shape(bb, x)
    return bb.normalize(op.reshape(bb.normalize(op.strided_slice(x, axes=[0], begin=[d], end=[d + 1])), dims[1:]))


def _check_float(kind, *exprs):
    for e in exprs:
        if e is not None and str(e.ty.dtype.dtype) != "float32":
            raise LoweringError(f"{kind} in {e.ty.dtype.dtype} is not supported (float32 only): cast the model to float32")


def _common(node, kind, inputs, bb):
    attrs = node.attributes
    direction = _text(attrs.get("direction", "forward"))
    if direction not in ("forward", "reverse", "bidirectional"):
        raise LoweringError(f"{kind} direction {direction!r} is not forward, reverse or bidirectional")
    dirs = 2 if direction == "bidirectional" else 1
    x = bb.normalize(inputs[0])
    if x.ty.ndim != 3:
        raise LoweringError(f"{kind} input X must have rank 3, got {x.ty.ndim}")
    if int(attrs.get("layout", 0)) == 1:  # batch first: [batch, seq, input] -> [seq, batch, input]
        x = bb.normalize(relax.op.permute_dims(x, [1, 0, 2]))
    return x, dirs, direction == "reverse"


def _run(bb, node, kind, *, x_proj, r, r_trans, r_scale, rbh, peep, lens, h0, c0, acts, dirs, hidden, reverse):
    """The onnxforge_rnn call; returns the node's outputs (Y, Y_h[, Y_c]) in its layout."""
    code = _KINDS["LSTM" if kind == "DynamicQuantizeLSTM" else kind][0]
    attrs = node.attributes
    clip = float(attrs["clip"]) if "clip" in attrs else 0.0
    optional = {"r_scale": r_scale, "rbh": rbh, "peep": peep, "lens": lens, "h0": h0, "c0": c0}
    present = [k for k, v in optional.items() if v is not None]
    args = [*x_proj, r, *(optional[k] for k in present), relax.const(acts)]
    r_scale_n = 0 if r_scale is None else int(r_scale.ty.shape.values[-1].value)

    def fte(*ins):
        xw0 = ins[0]
        seq, batch = xw0.shape[0], xw0.shape[1]
        shapes = [(seq, dirs, batch, hidden), (dirs, batch, hidden), (dirs, batch, hidden)]
        n_x = len(x_proj)

        def body(bins, outs):
            ptr = dict(zip(present, (b.data for b in bins[n_x + 1:n_x + 1 + len(present)])))
            dummy = bins[n_x].data  # R: handed where a flag says the tensor is absent
            i32 = lambda v: tirx.const(int(v), "int32")  # noqa: E731
            opt = []
            for k in ("r_scale", "rbh", "peep", "lens", "h0", "c0"):
                if k == "r_scale":
                    opt += [ptr.get(k, dummy), i32(r_scale_n), i32(k in ptr)]
                else:
                    opt += [ptr.get(k, dummy), i32(k in ptr)]
            call = tirx.call_extern(
                "int32", "onnxforge_rnn", i32(code), tirx.Cast("int32", seq), tirx.Cast("int32", batch), i32(hidden),
                i32(dirs), i32(reverse), bins[0].data, bins[n_x - 1].data, bins[n_x].data, i32(r_trans), *opt,
                bins[-1].data, tirx.const(clip, "float32"), i32(attrs.get("input_forget", 0)),
                i32(attrs.get("linear_before_reset", 0)), outs[0].data, outs[1].data, outs[2].data)
            return tirx.Evaluate(call)

        return te.extern(shapes, list(ins), body, name=f"onnxforge_{kind.lower()}", dtype=["float32"] * 3)

    out = bb.emit_te(fte, *args, primfunc_name_hint=f"onnxforge_{kind.lower()}")
    _mark_extern(bb)
    y, yh, yc = (bb.normalize(relax.TupleGetItem(out, i)) for i in range(3))
    if int(attrs.get("layout", 0)) == 1:
        y = relax.op.permute_dims(y, [2, 0, 1, 3])
        yh, yc = (relax.op.permute_dims(v, [1, 0, 2]) for v in (yh, yc))
    results = [y, yh, yc][:len(node.outputs)]
    return results if len(results) > 1 else results[0]


def _mark_extern(bb):
    """Tag every PrimFunc that calls onnxforge_rnn (build.py refuses builds that do not link recurrent.c)."""
    mod = bb.get()
    for gv, func in mod.functions_items():
        if isinstance(func, tirx.PrimFunc) and gv.name_hint.startswith("onnxforge_") and \
                (func.attrs is None or EXTERN_ATTR not in func.attrs):
            bb.update_func(gv, func.with_attr(EXTERN_ATTR, "onnxforge_rnn"))


def _projection(bb, x, w, bias, dirs):
    """Per direction: X [seq, batch, input] @ W[d]^T + bias[d] -> [seq, batch, gates]."""
    op = relax.op
    out = []
    for d in range(dirs):
        wd = _slice(bb, w, d)
        proj = op.matmul(x, op.permute_dims(wd, [1, 0]))
        if bias is not None:
            proj = op.add(proj, bias[d])
        out.append(bb.normalize(proj))
    return out


def _gate_biases(bb, b, dirs, gates, hidden, kind, lbr):
    """Per direction, the bias added to the input projection: Wb + Rb, except the
    recurrent bias of GRU's h gate under linear_before_reset (returned apart)."""
    if b is None:
        return None, None
    op = relax.op
    width = gates * hidden
    proj, rbh = [], []
    for d in range(dirs):
        bd = _slice(bb, b, d)
        wb = op.strided_slice(bd, axes=[0], begin=[0], end=[width])
        rb = op.strided_slice(bd, axes=[0], begin=[width], end=[2 * width])
        if kind == "GRU" and lbr:
            rb_zr = op.strided_slice(rb, axes=[0], begin=[0], end=[2 * hidden])
            zeros = relax.const(np.zeros(hidden, np.float32))
            proj.append(bb.normalize(op.add(wb, op.concat([rb_zr, zeros], axis=0))))
            rbh.append(op.strided_slice(rb, axes=[0], begin=[2 * hidden], end=[width]))
        else:
            proj.append(bb.normalize(op.add(wb, rb)))
    rbh_all = bb.normalize(op.concat([op.reshape(v, (1, hidden)) for v in rbh], axis=0)) if rbh else None
    return proj, rbh_all


def _standard(kind):
    def lower(bb, node, inputs):
        x, dirs, reverse = _common(node, kind, inputs, bb)
        gates = _KINDS[kind][1]
        w, r, b = bb.normalize(inputs[1]), bb.normalize(inputs[2]), _input(inputs, 3)
        lens, h0 = _input(inputs, 4), _input(inputs, 5)
        c0 = _input(inputs, 6) if kind == "LSTM" else None
        peep = _input(inputs, 7) if kind == "LSTM" else None
        _check_float(kind, x, w, r, b, h0, c0, peep)
        hidden = int(node.attributes.get("hidden_size") or _shape(bb, r)[1][-1])
        lbr = int(node.attributes.get("linear_before_reset", 0))
        bias, rbh = _gate_biases(bb, None if b is None else bb.normalize(b), dirs, gates, hidden, kind, lbr)
        x_proj = _projection(bb, x, w, bias, dirs)
        if not _EXTERN.get():
            return _unrolled(bb, node, kind, x_proj=x_proj, r=r, rbh=rbh, peep=peep, lens=lens, h0=_batch_layout(bb, node, h0),
                             c0=_batch_layout(bb, node, c0), acts=_activation_table(node, kind, dirs), dirs=dirs,
                             hidden=hidden, reverse=reverse)
        return _run(bb, node, kind, x_proj=x_proj, r=r, r_trans=1, r_scale=None, rbh=rbh, peep=peep,
                    lens=_lens(bb, lens), h0=_batch_layout(bb, node, h0), c0=_batch_layout(bb, node, c0),
                    acts=_activation_table(node, kind, dirs), dirs=dirs, hidden=hidden, reverse=reverse)

    return lower


def _lens(bb, lens):
    if lens is None:
        return None
    return bb.normalize(relax.op.astype(lens, "int32")) if str(lens.ty.dtype.dtype) != "int32" else lens


def _batch_layout(bb, node, state):
    """initial_h / initial_c as [dirs, batch, hidden] (layout=1 gives [batch, dirs, hidden])."""
    if state is None or int(node.attributes.get("layout", 0)) != 1:
        return state
    return bb.normalize(relax.op.permute_dims(state, [1, 0, 2]))


register_lowering("RNN")(_standard("RNN"))
register_lowering("GRU")(_standard("GRU"))
register_lowering("LSTM")(_standard("LSTM"))


@register_lowering("DynamicQuantizeLSTM", domain="com.microsoft")
def dynamic_quantize_lstm(bb, node, inputs):
    """Inputs: X, W [dirs, input, 4H] (u)int8, R [dirs, H, 4H] (u)int8, B, sequence_lens,
    initial_h, initial_c, P, W_scale, W_zero_point, R_scale, R_zero_point (scales per
    direction or per direction and column)."""
    kind = "DynamicQuantizeLSTM"
    x, dirs, reverse = _common(node, kind, inputs, bb)
    op = relax.op
    w, r = bb.normalize(inputs[1]), bb.normalize(inputs[2])
    b, lens, h0, c0, peep = (_input(inputs, i) for i in (3, 4, 5, 6, 7))
    w_scale, w_zp, r_scale, r_zp = (_input(inputs, i) for i in (8, 9, 10, 11))
    if w_scale is None or r_scale is None:
        raise LoweringError("DynamicQuantizeLSTM needs W_scale and R_scale (inputs 8 and 10)")
    _check_float(kind, x, b, h0, c0, peep)
    hidden = int(node.attributes.get("hidden_size") or _shape(bb, r)[1][1])
    bias, _ = _gate_biases(bb, None if b is None else bb.normalize(b), dirs, 4, hidden, "LSTM", 0)

    def centered(q, zp):  # (q - zero_point) as float: exact small integers, [dirs, rows, 4H]
        qf = op.astype(q, "float32")
        if zp is not None:
            zf = bb.normalize(op.astype(zp, "float32"))
            zf = op.reshape(zf, (dirs, 1, -1))
            qf = op.subtract(qf, zf)
        return bb.normalize(qf)

    def scales(s):  # [dirs, n] float32
        s = bb.normalize(op.astype(s, "float32"))
        return bb.normalize(op.reshape(s, (dirs, -1)))

    if not _EXTERN.get():
        raise LoweringError("DynamicQuantizeLSTM runs on onnxforge's C kernels only: compile for a CPU target with "
                            "cpu_kernels='blas' (the default when OpenBLAS for the target is installed)")
    wf, rf = centered(w, w_zp), centered(r, r_zp)
    ws = scales(w_scale)
    width = 4 * hidden
    n_ws = int(ws.ty.shape.values[-1].value)
    x2 = x
    x_proj = []
    for d in range(dirs):
        wd = _slice(bb, wf, d)
        sd = _slice(bb, ws, d)
        args = [x2, wd, sd] + ([bias[d]] if bias is not None else [])
        x_proj.append(bb.emit_te(_dq_gemm_te, *args, n_scale=n_ws, width=width,
                                 primfunc_name_hint="onnxforge_dq_gemm"))
    _mark_extern(bb)
    return _run(bb, node, kind, x_proj=x_proj, r=rf, r_trans=0, r_scale=scales(r_scale), rbh=None, peep=peep,
                lens=_lens(bb, lens), h0=h0, c0=c0, acts=_activation_table(node, "LSTM", dirs), dirs=dirs,
                hidden=hidden, reverse=reverse)


def _dq_gemm_te(x, w, scale, *bias, n_scale, width):
    """[seq, batch, input] uint8-quantized (whole tensor, as onnxruntime) @ w [input, width]
    * (x_scale * scale[col]) + bias -> [seq, batch, width], via onnxforge_dq_gemm."""
    seq, batch, k = x.shape

    def body(ins, outs):
        i32 = lambda v: tirx.const(int(v), "int32")  # noqa: E731
        rows = tirx.Cast("int32", seq * batch)
        return tirx.Evaluate(tirx.call_extern(
            "int32", "onnxforge_dq_gemm", rows, i32(width), tirx.Cast("int32", k), ins[0].data, ins[1].data,
            ins[2].data, i32(n_scale), ins[3].data if bias else ins[2].data, i32(bool(bias)), outs[0].data))

    return te.extern([(seq, batch, width)], [x, w, scale, *bias], body, name="onnxforge_dq_gemm", dtype="float32")


def _apply(op, x, code: int, alpha: float, beta: float):
    """ACTIVATIONS[code] on x, as relax ops (the unrolled form)."""
    name, dtype = ACTIVATIONS[code], "float32"
    c = lambda v: relax.const(float(v), dtype)  # noqa: E731
    if name == "sigmoid":
        return op.sigmoid(x)
    if name == "tanh":
        return op.tanh(x)
    if name == "relu":
        return op.nn.relu(x)
    if name == "hardsigmoid":
        return op.clip(op.add(op.multiply(x, c(alpha)), c(beta)), 0.0, 1.0)
    if name == "affine":
        return op.add(op.multiply(x, c(alpha)), c(beta))
    if name == "leakyrelu":
        return op.where(op.greater_equal(x, c(0)), x, op.multiply(x, c(alpha)))
    if name == "thresholdedrelu":
        return op.where(op.greater(x, c(alpha)), x, op.zeros_like(x))
    if name == "scaledtanh":
        return op.multiply(op.tanh(op.multiply(x, c(beta))), c(alpha))
    if name == "elu":
        return op.where(op.greater_equal(x, c(0)), x, op.multiply(op.subtract(op.exp(x), c(1)), c(alpha)))
    if name == "softsign":
        return op.divide(x, op.add(op.abs(x), c(1)))
    return op.log(op.add(op.exp(x), c(1)))  # softplus


def _unrolled(bb, node, kind, *, x_proj, r, rbh, peep, lens, h0, c0, acts, dirs, hidden, reverse):
    """The recurrence as relax ops, one set per timestep (any target; static sequence length)."""
    op = relax.op
    attrs = node.attributes
    clip = float(attrs["clip"]) if "clip" in attrs else 0.0
    lbr, input_forget = int(attrs.get("linear_before_reset", 0)), int(attrs.get("input_forget", 0))
    _, steps_dims = _shape(bb, x_proj[0])
    seq, batch = steps_dims[0], steps_dims[1]
    if not isinstance(seq, int):
        raise LoweringError(f"{kind} with a sequence length known only at run time needs onnxforge's C kernels "
                            f"(a CPU target with cpu_kernels='blas'); for other builds pin the sequence dim")
    H = hidden
    zeros = bb.normalize(op.zeros((batch, H), "float32"))
    lens32 = None if lens is None else bb.normalize(op.reshape(_lens(bb, lens), (batch, 1)))

    def gate(x, d, which):  # activation f/g/h of direction d, after clip
        x = bb.normalize(x)
        if clip > 0:
            x = bb.normalize(op.clip(x, -clip, clip))
        code, alpha, beta = acts[d, which]
        return bb.normalize(_apply(op, x, int(code), float(alpha), float(beta)))

    def cols(x, lo, hi):
        return bb.normalize(op.strided_slice(bb.normalize(x), axes=[1], begin=[lo], end=[hi]))

    ys, yhs, ycs = [], [], []
    for d in range(dirs):
        rd = bb.normalize(op.permute_dims(_slice(bb, r, d), [1, 0]))  # [H, G*H]
        h = zeros if h0 is None else _slice(bb, h0, d)
        c = zeros if c0 is None else _slice(bb, c0, d)
        p = None if peep is None else bb.normalize(op.reshape(_slice(bb, peep, d), (1, 3 * H)))
        outs = [None] * seq
        backwards = reverse or d == 1
        for t in (range(seq - 1, -1, -1) if backwards else range(seq)):
            xt = bb.normalize(op.strided_slice(x_proj[d], axes=[0], begin=[t], end=[t + 1]))
            xt = bb.normalize(op.reshape(xt, (batch, int(steps_dims[2]))))
            if kind == "GRU" and not lbr:
                zr = bb.normalize(op.add(op.matmul(h, op.strided_slice(rd, axes=[1], begin=[0], end=[2 * H])), cols(xt, 0, 2 * H)))
                z, rr = gate(cols(zr, 0, H), d, 0), gate(cols(zr, H, 2 * H), d, 0)
                n = op.add(op.matmul(op.multiply(rr, h), op.strided_slice(rd, axes=[1], begin=[2 * H], end=[3 * H])),
                           cols(xt, 2 * H, 3 * H))
                new_h = op.add(op.multiply(op.subtract(relax.const(1.0), z), gate(n, d, 1)), op.multiply(z, h))
            else:
                hr = bb.normalize(op.matmul(h, rd))  # h @ R^T, all gates
                g = bb.normalize(op.add(hr, xt))
                if kind == "RNN":
                    new_h = gate(g, d, 0)
                elif kind == "GRU":  # linear_before_reset: r * (h @ Rh^T + Rbh)
                    z, rr = gate(cols(g, 0, H), d, 0), gate(cols(g, H, 2 * H), d, 0)
                    rh = cols(hr, 2 * H, 3 * H)
                    if rbh is not None:
                        rh = op.add(rh, _slice(bb, rbh, d))
                    n = op.add(op.multiply(rr, rh), cols(xt, 2 * H, 3 * H))
                    new_h = op.add(op.multiply(op.subtract(relax.const(1.0), z), gate(n, d, 1)), op.multiply(z, h))
                else:  # LSTM: i, o, f, c
                    gi, go, gf, gc = (cols(g, k * H, (k + 1) * H) for k in range(4))
                    if p is not None:
                        gi = op.add(gi, op.multiply(cols(p, 0, H), c))
                    i = gate(gi, d, 0)
                    if input_forget:
                        f = op.subtract(relax.const(1.0), i)
                    else:
                        if p is not None:
                            gf = op.add(gf, op.multiply(cols(p, 2 * H, 3 * H), c))
                        f = gate(gf, d, 0)
                    new_c = bb.normalize(op.add(op.multiply(f, c), op.multiply(i, gate(gc, d, 1))))
                    if p is not None:
                        go = op.add(go, op.multiply(cols(p, H, 2 * H), new_c))
                    new_h = op.multiply(gate(go, d, 0), gate(new_c, d, 2))
            new_h = bb.normalize(new_h)
            if lens32 is not None:
                active = bb.normalize(op.less(relax.const(t, "int32"), lens32))
                if kind == "LSTM":
                    new_c = bb.normalize(op.where(active, new_c, c))
                outs[t] = bb.normalize(op.where(active, new_h, zeros))
                new_h = bb.normalize(op.where(active, new_h, h))
            else:
                outs[t] = new_h
            h = new_h
            if kind == "LSTM":
                c = new_c
        ys.append(bb.normalize(op.concat([op.reshape(o, (1, 1, batch, H)) for o in outs], axis=0)))
        yhs.append(op.reshape(h, (1, batch, H)))
        ycs.append(op.reshape(c, (1, batch, H)))
    y = bb.normalize(op.concat(ys, axis=1) if dirs == 2 else ys[0])
    yh, yc = (bb.normalize(op.concat(v, axis=0)) for v in (yhs, ycs))
    if int(attrs.get("layout", 0)) == 1:
        y = op.permute_dims(y, [2, 0, 1, 3])
        yh, yc = (op.permute_dims(v, [1, 0, 2]) for v in (yh, yc))
    results = [y, yh, yc][:len(node.outputs)]
    return results if len(results) > 1 else results[0]


def extern_kernels(mod: tvm.IRModule) -> list[str]:
    """Names of the PrimFuncs in `mod` that call recurrent.c."""
    return [gv.name_hint for gv, f in mod.functions_items()
            if isinstance(f, tirx.PrimFunc) and f.attrs is not None and EXTERN_ATTR in f.attrs]
