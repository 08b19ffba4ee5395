"""Channel dependency groups: which output channels of which layers must be
removed together, and which cannot be removed at all (and why).

Every axis of every tensor is a *dimension*. Ops tie dimensions together
(union-find): an elementwise op ties each input axis to the output axis it
broadcasts to, a Conv ties its weight's axis 1 to its input's channel axis and
its weight's axis 0 (and bias) to its output's channel axis, Transpose permutes,
Reshape maps whole axes or splits one axis into (heads, head size), and so on.
Two more relations build structure:

- Concat makes its output's axis a *composite* of its inputs' axes (Split the
  reverse): pruning one input's channels removes them at an offset in the output
  and in whatever reads it;
- a Reshape of C channels into (H, D) makes the C axis a *product*: heads are
  removed as a whole (D contiguous channels each), the head size is kept.

The groups are the leaf spaces (neither composite nor product). A group is
prunable when it holds at least one weight that produces its channels (Conv
output channels, MatMul/Gemm output columns) and nothing ties it to something
that cannot shrink: a graph input or output, an op we do not understand, a
normalization or softmax or reduction over that axis, a reshape that mixes it
into other axes, a grouped convolution, a slice along it.

Everything here is read-only; `passes.prune` uses the per-dimension map to slice
constants and fix up Reshape shapes and channel-count attributes.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable

import numpy as np

from ..ir import Model, Node, Value
from ..ir.shapes import is_unknown_dim
from .util import const

# ops whose every input broadcasts to the output (numpy rules); unary ops included
ELEMENTWISE = frozenset({
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "Where", "PRelu", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "BitShift", "Relu", "LeakyRelu", "Clip",
    "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Reciprocal", "Neg", "Abs", "Gelu",
    "Softplus", "Softsign", "Elu", "Selu", "Celu", "Mish", "Swish", "ThresholdedRelu", "Sin", "Cos", "Floor",
    "Ceil", "Round", "Sign", "Not", "IsNaN", "IsInf", "Identity", "Cast", "CastLike", "Dropout", "Shrink",
})
MS_ELEMENTWISE = frozenset({"Gelu", "FastGelu", "BiasGelu", "QuickGelu"})
POOLS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "AveragePool", "MaxPool", "LpPool"})
REDUCES = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"})
NO_RELATION = frozenset({"Shape", "Size", "Constant", "ConstantOfShape", "Range", "NonZero", "EyeLike"})
INNER_REASON = "inside an attention head (the head size is kept)"


class _Space:
    __slots__ = ("id", "parent", "size", "parts", "product", "reasons")

    def __init__(self, id_: int, size):
        self.id = id_
        self.parent: _Space = self
        self.size = size  # int, or None when unknown/symbolic
        self.parts: list[_Space] | None = None  # composite (Concat): ordered parts
        self.product: tuple[_Space, _Space] | None = None  # (heads, head size)
        self.reasons: list[str] = []


@dataclasses.dataclass
class Member:
    """A constant that has a dimension in a group (sliced when the group shrinks)."""
    value: Value
    axis: int
    role: str  # "source" (produces the channels), "sink" (reads them), "param"
    node: Node | None


@dataclasses.dataclass
class ChannelGroup:
    id: int
    size: int | None  # channels, or heads for kind="heads"
    kind: str  # "channels" | "heads"
    prunable: bool
    reasons: list[str]
    sources: list[str]  # nodes whose weights produce these channels
    sinks: list[str]  # nodes whose weights read them (input channels)
    params: list[str]  # other nodes with per-channel constants (BN, bias, depthwise, ...)
    head_size: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DimInfo:
    """Where each position along one constant's axis lives: group id and index."""
    value: Value
    axis: int
    leaves: np.ndarray  # group id per position
    index: np.ndarray  # channel (or head) index within that group per position


class ChannelGroups:
    """The analysis result: `groups` (public) plus what prune-channels needs."""

    def __init__(self, groups: list[ChannelGroup], dims: list[DimInfo], members: dict[int, list[Member]],
                 reshapes: list[tuple[Node, int, int]], attrs: list[tuple[Node, str, Any]],
                 space_leaves: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]]):
        self.groups = groups
        self.dims = dims
        self.members = members  # group id -> members
        self.reshapes = reshapes  # (Reshape node, output axis, ...) whose shape entry follows a dim
        self.attrs = attrs  # (node, attribute, spec) channel-count attributes to rewrite
        self.space_leaves = space_leaves  # (id(value), axis) -> (leaves, index) for any tensor dim

    def by_id(self) -> dict[int, ChannelGroup]:
        return {g.id: g for g in self.groups}

    @property
    def prunable(self) -> list[ChannelGroup]:
        return [g for g in self.groups if g.prunable]

    def as_dict(self) -> dict[str, Any]:
        return {"groups": [g.as_dict() for g in self.groups],
                "prunable": len(self.prunable), "total": len(self.groups)}


def _dim_size(value: Value, axis: int):
    shape = _shape(value)
    if shape is None or axis >= len(shape):
        return None
    d = shape[axis]
    return d if isinstance(d, int) else None


def _shape(value: Value | None):
    if value is None:
        return None
    array = value.const_value() if (value.producer is None or value.producer.op_type == "Constant") else None
    if array is not None:
        return tuple(array.shape)
    return value.shape


def _same(a, b) -> bool:
    return a is not None and b is not None and a == b


class _Builder:
    def __init__(self, model: Model):
        self.model = model
        self.spaces: list[_Space] = []
        self.dims: dict[tuple[int, int], _Space] = {}
        self.dim_values: dict[tuple[int, int], Value] = {}
        self.pending: list[tuple[list[_Space], list[_Space]]] = []
        self.members: list[tuple[Value, int, str, Node | None]] = []
        self.reshapes: list[tuple[Node, int, Value, int]] = []  # node, out axis, output value, shape input pos
        self.attrs: list[tuple[Node, str, Any]] = []

    # ---------------------------------------------------------------- union-find
    def new(self, size) -> _Space:
        s = _Space(len(self.spaces), size)
        self.spaces.append(s)
        return s

    def find(self, s: _Space) -> _Space:
        while s.parent is not s:
            s.parent = s.parent.parent
            s = s.parent
        return s

    def dim(self, value: Value, axis: int) -> _Space:
        shape = _shape(value)
        if shape is not None and axis < 0:
            axis += len(shape)
        key = (id(value), axis)
        if key not in self.dims:
            self.dims[key] = self.new(_dim_size(value, axis))
            self.dim_values[key] = value
        return self.find(self.dims[key])

    def block(self, space: _Space, reason: str) -> None:
        root = self.find(space)
        if len(root.reasons) < 4 and reason not in root.reasons:
            root.reasons.append(reason)
        elif not root.reasons:
            root.reasons.append(reason)

    def block_value(self, value: Value | None, reason: str) -> None:
        shape = _shape(value)
        if shape is None:
            return
        for axis in range(len(shape)):
            self.block(self.dim(value, axis), reason)

    def block_node(self, node: Node, reason: str) -> None:
        for v in list(node.inputs) + list(node.outputs):
            self.block_value(v, reason)

    def union(self, a: _Space, b: _Space) -> _Space:
        a, b = self.find(a), self.find(b)
        if a is b:
            return a
        if a.size is not None and b.size is not None and a.size != b.size:
            reason = f"tied dimensions disagree in size ({a.size} vs {b.size})"
            self.block(a, reason)
            self.block(b, reason)
            return a
        b.parent = a
        a.size = a.size if a.size is not None else b.size
        for r in b.reasons:
            if r not in a.reasons and len(a.reasons) < 4:
                a.reasons.append(r)
        if b.parts is not None:
            if a.parts is None:
                a.parts = b.parts
            else:
                self.pending.append((a.parts, b.parts))
        if b.product is not None:
            if a.product is None:
                a.product = b.product
            else:
                self.union(a.product[0], b.product[0])
                self.union(a.product[1], b.product[1])
        if a.parts is not None and a.product is not None:
            self.block(a, "a concatenated tensor is also split into heads")
        return a

    def set_parts(self, whole: _Space, parts: list[_Space]) -> None:
        root = self.find(whole)
        if root.parts is None:
            root.parts = parts
        else:
            self.pending.append((root.parts, parts))
        if root.product is not None:
            self.block(root, "a concatenated tensor is also split into heads")

    def set_product(self, whole: _Space, heads: _Space, inner: _Space) -> None:
        root = self.find(whole)
        if root.product is None:
            root.product = (heads, inner)
        else:
            self.union(root.product[0], heads)
            self.union(root.product[1], inner)
        if root.parts is not None:
            self.block(root, "a concatenated tensor is also split into heads")

    # ---------------------------------------------------------------- relations
    def broadcast(self, node: Node, inputs: Iterable[Value | None], out: Value) -> None:
        oshape = _shape(out)
        for value in inputs:
            if value is None:
                continue
            ishape = _shape(value)
            if ishape is None or oshape is None:
                self.block_node(node, f"shape unknown at {node.op_type} {node.name!r}")
                return
            ishape, oshape = self._known(value, ishape), self._known(out, oshape)
            offset = len(oshape) - len(ishape)
            for i, d in enumerate(ishape):
                o = i + offset
                if o < 0:
                    continue
                if d == 1 and oshape[o] != 1:
                    continue
                if (d == oshape[o] and d is not None) or (isinstance(d, int) and is_unknown_dim(oshape[o])):
                    self.union(self.dim(value, i), self.dim(out, o))
                else:
                    reason = f"cannot tell how {node.op_type} {node.name!r} broadcasts"
                    self.block(self.dim(value, i), reason)
                    self.block(self.dim(out, o), reason)

    def member(self, value: Value | None, axis: int, role: str, node: Node) -> None:
        if value is not None and const(value) is not None:
            self.members.append((value, axis, role, node))

    # ---------------------------------------------------------------- ops
    def visit(self, node: Node) -> None:
        op = node.op_type
        if node.subgraphs():
            self.block_node(node, f"op with subgraphs ({op} {node.name!r})")
            return
        if node.domain == "com.microsoft":
            if op in MS_ELEMENTWISE:
                self.broadcast(node, node.inputs, node.outputs[0])
                return
            if op == "Attention":
                self.attention(node)
                return
            self.block_node(node, f"unknown op com.microsoft.{op} ({node.name!r})")
            return
        if node.domain not in ("", "ai.onnx"):
            self.block_node(node, f"unknown op {node.domain}.{op} ({node.name!r})")
            return
        if op in NO_RELATION:
            return
        handler = getattr(self, f"op_{op}", None)
        if handler is not None:
            handler(node)
        elif op in ELEMENTWISE:
            self.broadcast(node, node.inputs, node.outputs[0])
            for extra in node.outputs[1:]:
                self.block_value(extra, f"extra output of {op} {node.name!r}")
        elif op in POOLS:
            self.leading(node, 2)
        elif op in REDUCES:
            self.reduce(node)
        else:
            self.block_node(node, f"unknown consumer op {op} ({node.name!r})")

    def leading(self, node: Node, n: int) -> None:
        x, y = node.inputs[0], node.outputs[0]
        if _shape(x) is None or _shape(y) is None:
            self.block_node(node, f"shape unknown at {node.op_type} {node.name!r}")
            return
        for a in range(n):
            self.union(self.dim(x, a), self.dim(y, a))

    def op_Conv(self, node: Node) -> None:
        x, w, b, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
        if const(w) is None or _shape(x) is None or _shape(y) is None or (b is not None and const(b) is None):
            self.block_node(node, f"Conv {node.name!r} with computed weights or unknown shapes")
            return
        group = int(node.attr("group", 1))
        cin, cout = _dim_size(x, 1), const(w).shape[0]
        self.union(self.dim(x, 0), self.dim(y, 0))
        self.union(self.dim(w, 0), self.dim(y, 1))
        if b is not None:
            self.union(self.dim(b, 0), self.dim(y, 1))
            self.member(b, 0, "param", node)
        if group == 1:
            self.union(self.dim(x, 1), self.dim(w, 1))
            self.member(w, 0, "source", node)
            self.member(w, 1, "sink", node)
        elif cin is not None and group == cin and cout == cin:
            self.union(self.dim(x, 1), self.dim(y, 1))
            self.member(w, 0, "param", node)
            self.attrs.append((node, "group", (id(y), 1)))
        else:
            reason = f"grouped convolution {node.name!r} (group={group})"
            self.block(self.dim(x, 1), reason)
            self.block(self.dim(y, 1), reason)

    def op_MatMul(self, node: Node) -> None:
        a, b, y = node.input(0), node.input(1), node.outputs[0]
        sa, sb, sy = _shape(a), _shape(b), _shape(y)
        if sa is None or sb is None or sy is None or len(sa) < 2 or len(sb) < 2:
            self.block_node(node, f"MatMul {node.name!r} with unknown or 1-D shapes")
            return
        self.union(self.dim(a, -1), self.dim(b, -2))
        self.union(self.dim(b, -1), self.dim(y, -1))
        self.union(self.dim(a, -2), self.dim(y, -2))
        sy = self._known(y, sy)
        for v, s in ((a, sa), (b, sb)):  # batch dims broadcast
            s = self._known(v, s)
            off = len(sy) - len(s)
            for i in range(len(s) - 2):
                if s[i] == 1:
                    continue
                if (s[i] == sy[i + off] and s[i] is not None) or (isinstance(s[i], int) and is_unknown_dim(sy[i + off])):
                    self.union(self.dim(v, i), self.dim(y, i + off))
                elif s[i] != 1:
                    self.block(self.dim(v, i), f"MatMul {node.name!r} batch broadcast")
        if const(b) is not None and len(sb) == 2:
            self.member(b, 1, "source", node)
            self.member(b, 0, "sink", node)
        elif const(a) is not None or (const(b) is not None and len(sb) > 2):
            self.block_node(node, f"MatMul {node.name!r} with a constant of unsupported layout")

    def op_Gemm(self, node: Node) -> None:
        a, b, c, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
        if _shape(a) is None or _shape(b) is None or _shape(y) is None:
            self.block_node(node, f"Gemm {node.name!r} with unknown shapes")
            return
        ta, tb = int(node.attr("transA", 0)), int(node.attr("transB", 0))
        self.union(self.dim(a, 0 if ta else 1), self.dim(b, 1 if tb else 0))
        self.union(self.dim(a, 1 if ta else 0), self.dim(y, 0))
        self.union(self.dim(b, 0 if tb else 1), self.dim(y, 1))
        if c is not None:
            self.broadcast(node, [c], y)
            if const(c) is not None and len(_shape(c)) >= 1:
                self.member(c, len(_shape(c)) - 1, "param", node)
        if const(b) is not None:
            self.member(b, 0 if tb else 1, "source", node)
            self.member(b, 1 if tb else 0, "sink", node)
        if const(a) is not None:
            self.block_node(node, f"Gemm {node.name!r} with a constant A")

    def op_BatchNormalization(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        self.broadcast(node, [x], y)
        if _shape(x) is None:
            return
        for p in node.inputs[1:5]:
            if p is not None:
                self.union(self.dim(p, 0), self.dim(x, 1))
                self.member(p, 0, "param", node)
        for extra in node.outputs[1:]:
            self.block_value(extra, "BatchNormalization training output")

    def op_InstanceNormalization(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        self.broadcast(node, [x], y)
        for p in node.inputs[1:3]:
            if p is not None and _shape(x) is not None:
                self.union(self.dim(p, 0), self.dim(x, 1))
                self.member(p, 0, "param", node)

    def op_LayerNormalization(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        self.broadcast(node, [x], y)
        sx = _shape(x)
        if sx is None:
            return
        axis = int(node.attr("axis", -1)) % len(sx)
        for a in range(axis, len(sx)):
            self.block(self.dim(x, a), f"LayerNormalization {node.name!r} normalizes over it")
        for p in node.inputs[1:3]:
            if p is not None:
                self.broadcast(node, [p], y)
        for extra in node.outputs[1:]:
            self.block_value(extra, "LayerNormalization statistics output")

    def op_GroupNormalization(self, node: Node) -> None:
        self.broadcast(node, [node.input(0)], node.outputs[0])
        self.block(self.dim(node.input(0), 1), f"GroupNormalization {node.name!r} groups channels")

    def _softmax(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        self.broadcast(node, [x], y)
        sx = _shape(x)
        if sx is None:
            return
        default = -1 if self.model.opset >= 13 else 1
        axis = int(node.attr("axis", default)) % len(sx)
        axes = [axis] if self.model.opset >= 13 else list(range(axis, len(sx)))
        for a in axes:
            self.block(self.dim(x, a), f"{node.op_type} {node.name!r} normalizes over it")

    op_Softmax = op_LogSoftmax = op_Hardmax = _softmax

    def reduce(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        sx, sy = _shape(x), _shape(y)
        if sx is None or sy is None:
            self.block_node(node, f"shape unknown at {node.op_type} {node.name!r}")
            return
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = [int(node.attr("axis", 0))]
        elif "axes" in node.attributes:
            axes = list(node.attr("axes"))
        elif node.input(1) is not None:
            ax = const(node.input(1))
            if ax is None:
                self.block_node(node, f"{node.op_type} {node.name!r} with run-time axes")
                return
            axes = [int(a) for a in np.ravel(ax)]
        else:
            axes = [] if node.attr("noop_with_empty_axes", 0) else list(range(len(sx)))
        axes = sorted({a % len(sx) for a in axes})
        keep = int(node.attr("keepdims", 1))
        o = 0
        for a in range(len(sx)):
            if a in axes:
                self.block(self.dim(x, a), f"{node.op_type} {node.name!r} reduces over it")
                o += keep
            else:
                self.union(self.dim(x, a), self.dim(y, o))
                o += 1

    def op_Transpose(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        sx = _shape(x)
        if sx is None:
            self.block_node(node, f"shape unknown at Transpose {node.name!r}")
            return
        perm = node.attr("perm") or list(reversed(range(len(sx))))
        for o, i in enumerate(perm):
            self.union(self.dim(x, int(i)), self.dim(y, o))

    def op_Concat(self, node: Node) -> None:
        y = node.outputs[0]
        sy = _shape(y)
        if sy is None or any(_shape(v) is None for v in node.inputs if v is not None):
            self.block_node(node, f"shape unknown at Concat {node.name!r}")
            return
        axis = int(node.attr("axis")) % len(sy)
        parts = []
        for v in node.inputs:
            if v is None:
                continue
            for a in range(len(sy)):
                if a != axis:
                    self.union(self.dim(v, a), self.dim(y, a))
            if _dim_size(v, axis) != 0:
                parts.append(self.dim(v, axis))
        if any(self.find(p).size is None for p in parts):
            self.block_node(node, f"Concat {node.name!r} of unknown sizes")
            return
        self.set_parts(self.dim(y, axis), parts)

    def op_Split(self, node: Node) -> None:
        x = node.input(0)
        sx = _shape(x)
        if sx is None or any(_shape(v) is None for v in node.outputs):
            self.block_node(node, f"shape unknown at Split {node.name!r}")
            return
        axis = int(node.attr("axis", 0)) % len(sx)
        parts = []
        for v in node.outputs:
            for a in range(len(sx)):
                if a != axis:
                    self.union(self.dim(x, a), self.dim(v, a))
            parts.append(self.dim(v, axis))
        if any(self.find(p).size is None for p in parts):
            self.block_node(node, f"Split {node.name!r} of unknown sizes")
            return
        if node.input(1) is not None and const(node.input(1)) is None:
            self.block_node(node, f"Split {node.name!r} with run-time sizes")
            return
        self.set_parts(self.dim(x, axis), parts)
        self.attrs.append((node, "split", [(id(v), axis) for v in node.outputs]))

    def op_Slice(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        sx = _shape(x)
        if sx is None or _shape(y) is None:
            self.block_node(node, f"shape unknown at Slice {node.name!r}")
            return
        if "starts" in node.attributes:  # opset < 10
            axes = node.attr("axes") or list(range(len(node.attr("starts"))))
        elif node.input(3) is not None:
            ax = const(node.input(3))
            if ax is None:
                self.block_node(node, f"Slice {node.name!r} with run-time axes")
                return
            axes = [int(a) for a in np.ravel(ax)]
        else:
            starts = const(node.input(1))
            if starts is None:
                self.block_node(node, f"Slice {node.name!r} with run-time axes")
                return
            axes = list(range(np.size(starts)))
        axes = {a % len(sx) for a in axes}
        for a in range(len(sx)):
            if a in axes:
                reason = f"Slice {node.name!r} slices along it"
                self.block(self.dim(x, a), reason)
                self.block(self.dim(y, a), reason)
            else:
                self.union(self.dim(x, a), self.dim(y, a))

    def op_Gather(self, node: Node) -> None:
        data, idx, y = node.input(0), node.input(1), node.outputs[0]
        sd, si = _shape(data), _shape(idx)
        if sd is None or si is None or _shape(y) is None:
            self.block_node(node, f"shape unknown at Gather {node.name!r}")
            return
        axis = int(node.attr("axis", 0)) % len(sd)
        for a in range(len(sd)):
            if a < axis:
                self.union(self.dim(data, a), self.dim(y, a))
            elif a > axis:
                self.union(self.dim(data, a), self.dim(y, a - 1 + len(si)))
            else:
                self.block(self.dim(data, a), f"Gather {node.name!r} indexes along it")
        for j in range(len(si)):
            self.union(self.dim(idx, j), self.dim(y, axis + j))

    def op_Pad(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        sx = _shape(x)
        pads = node.attr("pads") if "pads" in node.attributes else const(node.input(1))
        if sx is None or pads is None or (node.input(3) is not None):
            self.block_node(node, f"Pad {node.name!r} with run-time pads or axes")
            return
        pads = [int(p) for p in np.ravel(pads)]
        r = len(sx)
        for a in range(r):
            if pads[a] == 0 and pads[a + r] == 0:
                self.union(self.dim(x, a), self.dim(y, a))
            else:
                self.block(self.dim(x, a), f"Pad {node.name!r} pads along it")
                self.block(self.dim(y, a), f"Pad {node.name!r} pads along it")

    def _same_dims(self, node: Node) -> None:
        """Resize/Upsample/Expand-like ops: axes whose size does not change are tied."""
        x, y = node.input(0), node.outputs[0]
        sx, sy = _shape(x), _shape(y)
        if sx is None or sy is None:
            self.block_node(node, f"shape unknown at {node.op_type} {node.name!r}")
            return
        off = len(sy) - len(sx)
        for a in range(len(sx)):
            if _same(sx[a], sy[a + off]) and sx[a] != 1:
                self.union(self.dim(x, a), self.dim(y, a + off))
            elif sx[a] != 1:
                reason = f"{node.op_type} {node.name!r} resizes it"
                self.block(self.dim(x, a), reason)
                self.block(self.dim(y, a + off), reason)

    op_Resize = op_Upsample = _same_dims

    def op_Expand(self, node: Node) -> None:
        self._same_dims(node)
        shape = const(node.input(1))
        sx = _shape(node.input(0))
        if shape is None or sx is None:
            return
        off = len(shape) - len(sx)
        for a in range(len(sx)):
            if a + off >= 0 and int(shape[a + off]) > 1:
                self.block(self.dim(node.input(0), a), f"Expand {node.name!r} names its size")

    def op_Tile(self, node: Node) -> None:
        self.block_node(node, f"Tile {node.name!r} repeats it")

    # -- reshapes -------------------------------------------------------------
    def _reshape_like(self, node: Node) -> None:
        x, y = node.input(0), node.outputs[0]
        sx, sy = _shape(x), _shape(y)
        if sx is not None and sy is not None:
            sx, sy = self._known(x, sx), self._known(y, sy)
            sy = _fill_unknown(sx, sy)
            sx = _fill_unknown(sy, sx)
            for v, shape in ((x, sx), (y, sy)):
                for i, d in enumerate(shape):
                    if isinstance(d, int) and self.dim(v, i).size is None:
                        self.dim(v, i).size = d
        groups = _reshape_groups(sx, sy) if sx is not None and sy is not None else None
        if groups is None:
            self.block_node(node, f"{node.op_type} {node.name!r} mixes channels (or shapes unknown)")
            return
        changing: list[int] = []  # output axes whose size may follow a group
        for ins, outs in groups:
            ins = [i for i in ins if sx[i] != 1]
            outs = [o for o in outs if sy[o] != 1]
            if len(ins) == 1 and len(outs) == 1:
                self.union(self.dim(x, ins[0]), self.dim(y, outs[0]))
                changing.append(outs[0])
            elif len(ins) == 1 and len(outs) == 2:
                self.block(self.dim(y, outs[1]), INNER_REASON)
                self.set_product(self.dim(x, ins[0]), self.dim(y, outs[0]), self.dim(y, outs[1]))
                changing.append(outs[0])
            elif len(ins) == 2 and len(outs) == 1:
                self.block(self.dim(x, ins[1]), INNER_REASON)
                self.set_product(self.dim(y, outs[0]), self.dim(x, ins[0]), self.dim(x, ins[1]))
                changing.append(outs[0])
            else:
                reason = f"{node.op_type} {node.name!r} mixes it with other axes"
                for i in ins:
                    self.block(self.dim(x, i), reason)
                for o in outs:
                    self.block(self.dim(y, o), reason)
        if node.op_type == "Reshape":
            entries = _shape_entries(node.input(1))
            for o in changing:
                kind = entries[o] if entries is not None and o < len(entries) else None
                if kind is None:
                    self.block(self.dim(y, o), f"Reshape {node.name!r} target shape computed at run time")
                elif kind == "const":
                    self.reshapes.append((node, o, y, 1))

    def _known(self, value: Value, shape) -> tuple:
        """A shape with unknown dims filled from the sizes their tied dimensions have."""
        out = []
        for i, d in enumerate(shape):
            if not isinstance(d, int):
                size = self.dim(value, i).size
                d = size if size is not None else d
            out.append(d)
        return tuple(out)

    op_Reshape = op_Flatten = op_Squeeze = op_Unsqueeze = _reshape_like

    # -- fused attention ---------------------------------------------------------
    def attention(self, node: Node) -> None:
        x, w, b, y = node.input(0), node.input(1), node.input(2), node.outputs[0]
        sx, sy = _shape(x), _shape(y)
        heads = int(node.attr("num_heads", 0))
        ws = _shape(w)
        if const(w) is None or sx is None or sy is None or ws is None or len(ws) != 2 or heads <= 0 \
                or any(node.input(i) is not None for i in (4, 6, 7)) or len(node.outputs) > 1 \
                or node.attr("past_present_share_buffer", 0) or node.attr("unidirectional", 0):
            self.block_node(node, f"Attention {node.name!r} in a form we do not prune")
            return
        sizes = node.attr("qkv_hidden_sizes") or [ws[1] // 3] * 3
        if any(s % heads for s in sizes) or sum(sizes) != ws[1]:
            self.block_node(node, f"Attention {node.name!r} with uneven heads")
            return
        self.union(self.dim(x, 0), self.dim(y, 0))
        self.union(self.dim(x, 1), self.dim(y, 1))
        self.union(self.dim(x, 2), self.dim(w, 0))
        self.member(w, 0, "sink", node)
        self.member(w, 1, "source", node)
        head_space = self.new(heads)
        flats = []
        for s in sizes:
            inner = self.new(s // heads)
            self.block(inner, INNER_REASON)
            flat = self.new(s)
            self.set_product(flat, head_space, inner)
            flats.append(flat)
        self.set_parts(self.dim(w, 1), flats)
        if b is not None:
            self.union(self.dim(b, 0), self.dim(w, 1))
            self.member(b, 0, "param", node)
        out_flat = self.dim(y, 2)
        self.set_product(out_flat, head_space, self.find(flats[2]).product[1])
        bias = node.input(5)
        if bias is not None:
            sb = _shape(bias)
            if sb is None or len(sb) != 4 or sb[1] != 1:
                self.block(head_space, f"Attention {node.name!r} has a per-head attention bias")
        self.attrs.append((node, "num_heads", head_space))
        if node.attr("qkv_hidden_sizes"):
            self.attrs.append((node, "qkv_hidden_sizes", flats))

    # ---------------------------------------------------------------- finish
    def finalize(self) -> None:
        for _ in range(50):
            if not self.pending:
                break
            pending, self.pending = self.pending, []
            for a, b in pending:
                ra, rb = [self.find(p) for p in a], [self.find(p) for p in b]
                if [id(p) for p in ra] == [id(p) for p in rb]:
                    continue
                if len(ra) == len(rb) and all(p.size == q.size for p, q in zip(ra, rb)):
                    for p, q in zip(ra, rb):
                        self.union(p, q)
                else:
                    for p in ra + rb:
                        self.block(p, "concatenations with different splits meet")
        # blocked composites and products block their parts and heads
        changed = True
        while changed:
            changed = False
            for s in self.spaces:
                if s.parent is not s or not s.reasons:
                    continue
                subs = [self.find(p) for p in s.parts] if s.parts else []
                if s.product:
                    subs.append(self.find(s.product[0]))
                for p in subs:
                    if not p.reasons:
                        p.reasons.append(s.reasons[0])
                        changed = True

    def expand(self, space: _Space, depth: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
        root = self.find(space)
        if root.size is None or depth > 32:
            return None
        if root.parts is not None:
            pieces = [self.expand(p, depth + 1) for p in root.parts]
            if any(p is None for p in pieces):
                return None
            leaves = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.int64)
            index = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.int64)
            return (leaves, index) if len(leaves) == root.size else None
        if root.product is not None:
            heads, inner = self.find(root.product[0]), self.find(root.product[1])
            if heads.size is None or inner.size is None or heads.size * inner.size != root.size \
                    or heads.parts is not None or heads.product is not None:
                return None
            return np.full(root.size, heads.id), np.repeat(np.arange(heads.size), inner.size)
        return np.full(root.size, root.id), np.arange(root.size)


def _shape_entries(shape: Value | None) -> list[str | None] | None:
    """Per entry of a Reshape target: 'const' (a positive constant we must update),
    'free' (0 or -1: follows the input), or None (computed at run time)."""
    if shape is None:
        return None
    array = const(shape)
    if array is not None:
        return ["free" if int(v) <= 0 else "const" for v in np.ravel(array)]
    node = shape.producer
    if node is not None and node.op_type == "Concat" and int(node.attr("axis", 0)) == 0:
        out: list[str | None] = []
        for v in node.inputs:
            a = const(v)
            if a is not None:
                out.extend("free" if int(e) <= 0 else None for e in np.ravel(a))  # a constant piece we do not rewrite
            else:
                s = _shape(v)
                if s is None or len(s) != 1 or not isinstance(s[0], int):
                    return None
                out.extend([None] * s[0])
        return out
    return None


def _fill_unknown(sx, sy):
    """An output shape with one unknown dim (a -1 onnx could not resolve) gets it
    from the element count when both sides hold the same symbolic dims."""
    unknown = [i for i, d in enumerate(sy) if is_unknown_dim(d)]
    if len(unknown) != 1 or any(is_unknown_dim(d) for d in sx):
        return sy
    sy = tuple(None if i == unknown[0] else d for i, d in enumerate(sy))
    sym_x = sorted(d for d in sx if isinstance(d, str))
    sym_y = sorted(d for d in sy if isinstance(d, str))
    if sym_x != sym_y:
        return sy
    px = int(np.prod([d for d in sx if isinstance(d, int)], dtype=np.int64))
    py = int(np.prod([d for d in sy if isinstance(d, int)], dtype=np.int64))
    if py == 0 or px % py:
        return sy
    return tuple(px // py if i == unknown[0] else d for i, d in enumerate(sy))


def _reshape_groups(sx, sy) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input axes with runs of output axes of equal total size."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    n, m = len(sx), len(sy)
    while i < n and j < m:
        if sx[i] == sy[j] and sx[i] is not None:
            groups.append(([i], [j]))
            i += 1
            j += 1
            continue
        if sx[i] == 1:
            groups.append(([i], []))
            i += 1
            continue
        if sy[j] == 1:
            groups.append(([], [j]))
            j += 1
            continue
        if not isinstance(sx[i], int) or not isinstance(sy[j], int):
            return None
        pi, pj, ai, aj = sx[i], sy[j], [i], [j]
        i += 1
        j += 1
        while pi != pj:
            if pi < pj:
                if i >= n or not isinstance(sx[i], int):
                    return None
                pi *= sx[i]
                ai.append(i)
                i += 1
            else:
                if j >= m or not isinstance(sy[j], int):
                    return None
                pj *= sy[j]
                aj.append(j)
                j += 1
        groups.append((ai, aj))
    while i < n:
        if sx[i] != 1:
            return None
        groups.append(([i], []))
        i += 1
    while j < m:
        if sy[j] != 1:
            return None
        groups.append(([], [j]))
        j += 1
    return groups


def build_groups(model: Model) -> ChannelGroups:
    """Compute the channel dependency groups of the model's top-level graph."""
    from .analysis import get_analysis

    get_analysis(model, "all-shapes")  # with the symbolic step: unknown shapes block their groups
    graph = model.graph
    b = _Builder(model)
    for value in graph.inputs:
        if not value.is_initializer:
            b.block_value(value, f"graph input {value.name!r}")
    for node in graph.nodes:
        b.visit(node)
    for value in graph.outputs:
        b.block_value(value, f"graph output {value.name!r}")
    b.finalize()

    # every dimension's expansion into leaf positions
    space_leaves: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    cache: dict[int, Any] = {}
    for key, space in b.dims.items():
        root = b.find(space)
        if root.id not in cache:
            cache[root.id] = b.expand(root)
        if cache[root.id] is not None:
            space_leaves[key] = cache[root.id]

    members: dict[int, list[Member]] = {}
    dims: list[DimInfo] = []
    seen: set[tuple[int, int]] = set()
    for value, axis, role, node in b.members:
        key = (id(value), axis)
        exp = space_leaves.get(key)
        if exp is None:
            continue
        for leaf in np.unique(exp[0]):
            members.setdefault(int(leaf), []).append(Member(value, axis, role, node))
    for key, value in b.dim_values.items():
        if key in space_leaves and const(value) is not None and key not in seen:
            seen.add(key)
            dims.append(DimInfo(value, key[1], *space_leaves[key]))

    groups: list[ChannelGroup] = []
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    for leaf_id, mems in members.items():
        leaf = b.find(b.spaces[leaf_id])
        if leaf.id != leaf_id:
            continue
        heads = any(s.parent is s and s.product is not None and b.find(s.product[0]) is leaf for s in b.spaces)
        head_size = None
        if heads:
            head_size = next(b.find(s.product[1]).size for s in b.spaces
                             if s.parent is s and s.product is not None and b.find(s.product[0]) is leaf)

        def names(role, mems=mems):
            found = []
            for m in sorted((x for x in mems if x.role == role), key=lambda x: order.get(id(x.node), 0)):
                name = m.node.name or (m.node.outputs[0].name if m.node.outputs else m.node.op_type)
                if name not in found:
                    found.append(name)
            return found

        sources, sinks = names("source"), names("sink")
        reasons = list(leaf.reasons)
        if not sources and not reasons:
            reasons.append("no layer produces these channels from weights")
        groups.append(ChannelGroup(leaf_id, leaf.size, "heads" if heads else "channels", not reasons, reasons,
                                   sources, sinks, [n for n in names("param") if n not in sources + sinks],
                                   head_size))
    first = {g.id: min((order.get(id(m.node), 0) for m in members[g.id]), default=0) for g in groups}
    groups.sort(key=lambda g: first[g.id])
    attrs: list[tuple[Node, str, Any]] = []
    for node, attr, spec in b.attrs:
        if attr == "group":
            attrs.append((node, attr, space_leaves.get(spec)))
        elif attr == "split":
            attrs.append((node, attr, [space_leaves.get(k) for k in spec]))
        elif attr == "num_heads":
            root = b.find(spec)
            attrs.append((node, attr, (np.full(root.size, root.id), np.arange(root.size))))
        elif attr == "qkv_hidden_sizes":
            attrs.append((node, attr, [b.expand(f) for f in spec]))
    reshapes = [(node, axis, id(y)) for node, axis, y, _ in b.reshapes]
    return ChannelGroups(groups, dims, members, reshapes, attrs, space_leaves)
