"""NonMaxSuppression (the frontend's lowering did not build: "Buffer T_gather is
used before its definition"). One serial TIR kernel (te.extern + IRBuilder) that
follows onnx's reference: per batch and class, boxes in descending score order
(ties: lower index first), those at or below score_threshold dropped when it is
given, a box kept when its IoU with every box kept before it in the class is at
most iou_threshold, at most max_output_boxes_per_class per class. The kernel
writes every selection into a buffer of B * C * N rows and their count; the
output is the first `count` rows (a run-time extent). See registry.py for the
lowering signature."""
from __future__ import annotations

import numpy as np
from tvm import relax, te, tirx
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder import tirx as T

from ..ir import LoweringError
from .op_helpers import _const, _dims, _input, _static
from .registry import register_lowering

op = relax.op


def _corners(box, center: bool):
    """(x_min, x_max, y_min, y_max) of a box (4 float32 loads)."""
    a, b, c, d = box
    if center:  # [x_center, y_center, width, height]
        half = tirx.const(2.0, "float32")
        return a - c / half, a + c / half, b - d / half, b + d / half
    # [y1, x1, y2, x2], corners in either order
    return tirx.min(b, d), tirx.max(b, d), tirx.min(a, c), tirx.max(a, c)


def _suppresses(box1, box2, center: bool, threshold):
    ax0, ax1, ay0, ay1 = _corners(box1, center)
    bx0, bx1, by0, by1 = _corners(box2, center)
    zero = tirx.const(0.0, "float32")
    w = tirx.min(ax1, bx1) - tirx.max(ax0, bx0)
    h = tirx.min(ay1, by1) - tirx.max(ay0, by0)
    inter = w * h
    area1, area2 = (ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0)
    union = area1 + area2 - inter
    safe = tirx.Select(union > zero, union, tirx.const(1.0, "float32"))
    return tirx.all(w > zero, h > zero, inter > zero, area1 > zero, area2 > zero, union > zero,
                    inter / safe > threshold)


def _nms_kernel(boxes, scores, max_out, iou, score, *, center: bool, filter_scores: bool):
    batches, classes, count = (int(d) for d in scores.shape)

    def gen(bx_ptr, sc_ptr, mo_ptr, io_ptr, st_ptr, out_ptr, n_ptr):
        with IRBuilder() as ib:
            with T.seq_scope():
                bx, sc, mo, io, st = (T.buffer_proxy(p) for p in (bx_ptr, sc_ptr, mo_ptr, io_ptr, st_ptr))
                out, n_out = T.buffer_proxy(out_ptr), T.buffer_proxy(n_ptr)
                total = T.buffer_proxy(T.alloc_buffer((1,), "int64", scope="local"))
                start = T.buffer_proxy(T.alloc_buffer((1,), "int64", scope="local"))
                chosen = T.buffer_proxy(T.alloc_buffer((1,), "int64", scope="local"))
                best = T.buffer_proxy(T.alloc_buffer((1,), "int64", scope="local"))
                best_score = T.buffer_proxy(T.alloc_buffer((1,), "float32", scope="local"))
                keep = T.buffer_proxy(T.alloc_buffer((1,), "int8", scope="local"))
                taken = T.buffer_proxy(T.alloc_buffer((count,), "int8", scope="global"))
                total[0] = tirx.const(0, "int64")
                with T.serial(0, batches) as b:
                    with T.serial(0, classes) as c:
                        start[0] = total[0]
                        chosen[0] = tirx.const(0, "int64")
                        with T.serial(0, count) as i:
                            if filter_scores:
                                taken[i] = tirx.Cast("int8", tirx.Not(sc[b, c, i] > st[0]))
                            else:
                                taken[i] = tirx.const(0, "int8")
                        with T.serial(0, count) as _step:
                            with T.If(chosen[0] < mo[0]):
                                with T.Then():
                                    best[0] = tirx.const(-1, "int64")
                                    best_score[0] = tirx.const(0.0, "float32")
                                    with T.serial(0, count) as i:
                                        with T.If(tirx.all(taken[i] == tirx.const(0, "int8"),
                                                           tirx.any(best[0] < 0, sc[b, c, i] > best_score[0]))):
                                            with T.Then():
                                                best[0] = tirx.Cast("int64", i)
                                                best_score[0] = sc[b, c, i]
                                    with T.If(best[0] >= 0):
                                        with T.Then():
                                            taken[best[0]] = tirx.const(1, "int8")
                                            keep[0] = tirx.const(1, "int8")
                                            with T.serial(0, count) as j:
                                                with T.If(j < chosen[0]):
                                                    with T.Then():
                                                        other = out[start[0] + j, 2]
                                                        box1 = [bx[b, best[0], k] for k in range(4)]
                                                        box2 = [bx[b, other, k] for k in range(4)]
                                                        with T.If(_suppresses(box1, box2, center, io[0])):
                                                            with T.Then():
                                                                keep[0] = tirx.const(0, "int8")
                                            with T.If(keep[0] == tirx.const(1, "int8")):
                                                with T.Then():
                                                    out[total[0], 0] = tirx.Cast("int64", b)
                                                    out[total[0], 1] = tirx.Cast("int64", c)
                                                    out[total[0], 2] = best[0]
                                                    total[0] = total[0] + 1
                                                    chosen[0] = chosen[0] + 1
                n_out[0] = total[0]
            return ib.get()

    return te.extern([(batches * classes * count, 3), (1,)], [boxes, scores, max_out, iou, score],
                     lambda ins, outs: gen(*ins, *outs), dtype=["int64", "int64"], name="onnx_nms")


@register_lowering("NonMaxSuppression")
def non_max_suppression(bb, node, inputs):
    boxes, scores = bb.normalize(inputs[0]), bb.normalize(inputs[1])
    bd, sd = _dims(boxes), _dims(scores)
    for d in bd + sd:
        _static(d, "NonMaxSuppression's box and score dims")
    if len(bd) != 3 or len(sd) != 3 or bd[2] != 4 or bd[0] != sd[0] or bd[1] != sd[2]:
        raise LoweringError(f"NonMaxSuppression boxes {bd} and scores {sd}: (B, N, 4) and (B, C, N) expected")

    def scalar(i, dtype, default):
        x = _input(inputs, i)
        if x is None:
            return _const(np.array([default], dtype), dtype), False
        n = int(np.prod(_dims(bb.normalize(x)), dtype=np.int64))
        if n == 0:
            return _const(np.array([default], dtype), dtype), False
        return bb.normalize(op.reshape(op.astype(x, dtype), (1,))), True

    max_out, _ = scalar(2, "int64", 0)
    iou, _ = scalar(3, "float32", 0.0)
    score, has_score = scalar(4, "float32", 0.0)
    boxes32 = boxes if str(boxes.ty.dtype.dtype) == "float32" else bb.normalize(op.astype(boxes, "float32"))
    scores32 = scores if str(scores.ty.dtype.dtype) == "float32" else bb.normalize(op.astype(scores, "float32"))
    center = bool(node.attributes.get("center_point_box", 0))
    pair = bb.emit_te(_nms_kernel, boxes32, scores32, max_out, iou, score, center=center, filter_scores=has_score,
                      primfunc_name_hint="onnx_nms")
    rows, n = bb.normalize(relax.TupleGetItem(pair, 0)), bb.normalize(relax.TupleGetItem(pair, 1))
    end = bb.normalize(op.concat([n, _const(np.array([3], np.int64), "int64")], axis=0))
    return op.dynamic_strided_slice(rows, _const(np.zeros(2, np.int64), "int64"), end,
                                    _const(np.ones(2, np.int64), "int64"))

