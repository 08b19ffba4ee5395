"""Property tests: random valid float32 graphs (opset 17) keep verifying and keep
their outputs through the exact passes cleanup,cse,fold-constants, and a second
run of -O1 (which ends with cse,cleanup after folding) finds nothing left to do."""
from __future__ import annotations

import itertools

import numpy as np
import onnx
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import onnxforge
from onnxforge.ir import to_proto
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs

PIPELINE = "cleanup,cse,fold-constants"
# Folding can create constants equal to existing ones, which only a later cse
# merges; so the fixed-point property is stated for -O1, which runs cse after folding.
FIXED_POINT_PIPELINE = "-O1"
# The passes are exact and folding runs onnxruntime's own kernels, so only the
# summation order of a kernel (MatMul on a prepacked constant) may move last bits.
ATOL = RTOL = 1e-5
MAX_NUMEL = 64  # small tensors keep each example to a few milliseconds
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)  # the "to the end" Slice bounds exporters emit
SETTINGS = settings(max_examples=200, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


class _Gen:
    """Builds a graph node by node, tracking the static shape of every float value
    so that each node it emits is valid by construction."""

    def __init__(self, draw):
        self.draw, self.nodes, self.inits = draw, [], []
        self.shapes: dict[str, tuple] = {}  # float value -> shape, in creation order
        self.consts: set[str] = set()  # values computable from constants alone
        self.counter = itertools.count()

    def fresh(self, base: str) -> str:
        return f"{base}_{next(self.counter)}"

    def emit(self, op: str, inputs: list[str], shape, **attrs) -> str:
        out = self.fresh(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        self.shapes[out] = tuple(shape)
        if all(i in self.consts for i in inputs if i):
            self.consts.add(out)
        return out

    def constant(self, array: np.ndarray) -> str:
        # Constant nodes and initializers must be handled alike: draw either.
        name = self.fresh("const")
        tensor = numpy_helper.from_array(array, name)
        if self.draw(st.booleans()):
            self.nodes.append(helper.make_node("Constant", [], [name], value=tensor))
        else:
            self.inits.append(tensor)
        self.consts.add(name)
        if array.dtype == np.float32:
            self.shapes[name] = array.shape
        return name

    def data(self, shape, nonzero: bool = False) -> str:
        rng = np.random.default_rng(self.draw(st.integers(0, 2**32 - 1)))
        array = rng.uniform(0.5 if nonzero else -2, 2, size=shape)
        if nonzero:  # safe denominators: |value| >= 0.5
            array *= rng.choice([-1, 1], size=shape)
        return self.constant(array.astype(np.float32))

    def pick(self, ok=lambda shape: True) -> str | None:
        names = [n for n, s in self.shapes.items() if ok(s)]
        if not names:
            return None
        consts = [n for n in names if n in self.consts]
        mode = self.draw(st.sampled_from(["last", "any", "const"]))
        if mode == "last":  # chains: Reshape of Reshape, Transpose of Transpose, ...
            return names[-1]
        return self.draw(st.sampled_from(consts if mode == "const" and consts else names))

    # -- one method per kind of step; each returns the new value or None -----
    def unary(self, x, s):
        op = self.draw(st.sampled_from(["Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Exp", "Identity"]))
        if op == "Exp":  # exp of tanh stays in [1/e, e]
            x = self.emit("Tanh", [x], s)
        return self.emit(op, [x], s)

    def binary(self, x, s):
        op = self.draw(st.sampled_from(["Add", "Sub", "Mul", "Div"]))
        if op == "Div" and self.draw(st.booleans()):
            y = self.data(tuple(d if self.draw(st.booleans()) else 1 for d in s), nonzero=True)
        else:
            def fits(t):
                try:
                    return _numel(np.broadcast_shapes(s, t)) <= MAX_NUMEL
                except ValueError:
                    return False
            y = self.pick(fits) if self.draw(st.booleans()) else None
            if y is None:  # a broadcastable constant: a suffix of s, some dims 1
                rank = self.draw(st.integers(0, len(s)))
                y = self.data(tuple(d if self.draw(st.booleans()) else 1 for d in s[len(s) - rank:]))
            if op == "Div":  # abs(y) + 1 never reaches zero
                one = self.constant(np.ones((), np.float32))
                y = self.emit("Add", [self.emit("Abs", [y], self.shapes[y]), one], self.shapes[y])
        pair = [y, x] if op != "Div" and self.draw(st.booleans()) else [x, y]
        return self.emit(op, pair, np.broadcast_shapes(s, self.shapes[y]))

    def matmul(self, x, s):
        n = self.draw(st.integers(1, 4))
        y = self.pick(lambda t: len(t) == 2 and t[0] == s[-1]) if self.draw(st.booleans()) else None
        y = y or self.data((s[-1], n))
        return self.emit("MatMul", [x, y], s[:-1] + self.shapes[y][1:])

    def reshape(self, x, s):
        left, target = _numel(s), []
        for _ in range(self.draw(st.integers(0, 2))):
            d = self.draw(st.sampled_from([d for d in range(1, left + 1) if left % d == 0]))
            target.append(d)
            left //= d
        target.append(left)
        self.draw(st.randoms()).shuffle(target)
        spec = list(target)
        zeros = [i for i in range(min(len(s), len(spec))) if spec[i] == s[i]]
        if zeros and self.draw(st.booleans()):  # 0 copies the input dim (allowzero=0)
            spec[self.draw(st.sampled_from(zeros))] = 0
        if self.draw(st.booleans()):  # -1 is inferred from the rest
            spec[self.draw(st.integers(0, len(spec) - 1))] = -1
        return self.emit("Reshape", [x, self.constant(np.array(spec, np.int64))], target)

    def transpose(self, x, s):
        for _ in range(self.draw(st.integers(1, 2))):  # two in a row: a chain to collapse
            perm = list(self.draw(st.permutations(range(len(s)))))
            mode = self.draw(st.sampled_from(["random", "identity", "default"]))
            if mode == "default":  # no perm attribute: reverse the axes
                x, s = self.emit("Transpose", [x], s[::-1]), s[::-1]
                continue
            perm = sorted(perm) if mode == "identity" else perm
            x, s = self.emit("Transpose", [x], [s[p] for p in perm], perm=perm), tuple(s[p] for p in perm)
        return x

    def concat(self, x, s):
        axis = self.draw(st.integers(-len(s), len(s) - 1))
        a, parts = axis % len(s), [x]
        for _ in range(self.draw(st.integers(0, 2))):  # one input only: a no-op for cleanup
            kind = self.draw(st.sampled_from(["same", "pool", "const"]))
            y = x if kind == "same" else None
            if kind == "pool":
                y = self.pick(lambda t: len(t) == len(s) and all(t[i] == s[i] for i in range(len(s)) if i != a))
            if y is None:
                y = self.data(s[:a] + (self.draw(st.integers(1, 3)),) + s[a + 1:])
            parts.append(y)
        out = s[:a] + (sum(self.shapes[p][a] for p in parts),) + s[a + 1:]
        return self.emit("Concat", parts, out, axis=axis) if _numel(out) <= MAX_NUMEL else None

    def slice(self, x, s):
        axes = list(self.draw(st.permutations(range(len(s)))))[: self.draw(st.integers(1, len(s)))]
        starts, ends, steps, out = [], [], [], list(s)
        for ax in axes:
            d, step = s[ax], self.draw(st.sampled_from([1, 1, 2, -1, -2]))
            start = self.draw(st.integers(-d, d - 1))
            end = self.draw(st.one_of(st.integers(-d - 1, d), st.just(INT64_MAX if step > 0 else INT64_MIN)))
            n = len(range(d)[start:end:step])  # Python clamps in-range bounds as ONNX does
            if n == 0:  # keep tensors non-empty: take the whole axis
                start, end = (0, d) if step > 0 else (d - 1, -d - 1)
                n = len(range(d)[start:end:step])
            starts, ends, steps, out[ax] = starts + [start], ends + [end], steps + [step], n
        ins = [x, self.constant(np.array(starts, np.int64)), self.constant(np.array(ends, np.int64))]
        if axes != list(range(len(s))) or self.draw(st.booleans()):
            ins.append(self.constant(np.array([a - len(s) if self.draw(st.booleans()) else a for a in axes], np.int64)))
        else:
            ins.append("")  # axes omitted: all of them, in order
        if set(steps) != {1} or self.draw(st.booleans()):
            ins.append(self.constant(np.array(steps, np.int64)))
        return self.emit("Slice", ins if ins[-1] else ins[:3], out)

    def duplicate(self):
        """Copy an existing node or initializer under a new name: work for cse."""
        copies = [n for n in self.nodes if n.output[0] in self.shapes] + [t for t in self.inits if t.name in self.shapes]
        if not copies:
            return None
        item = self.draw(st.sampled_from(copies))
        new, old = self.fresh("dup"), item.output[0] if isinstance(item, onnx.NodeProto) else item.name
        clone = type(item)()
        clone.CopyFrom(item)
        if isinstance(item, onnx.NodeProto):
            clone.output[0] = new
            self.nodes.append(clone)
        else:
            clone.name = new
            self.inits.append(clone)
        self.shapes[new] = self.shapes[old]
        if old in self.consts:
            self.consts.add(new)
        # Read both copies, else cleanup drops the dead one before cse sees it.
        op = self.draw(st.sampled_from(["Add", "Sub", "Mul"]))
        return self.emit(op, [old, new], self.shapes[old])


@st.composite
def random_models(draw) -> onnx.ModelProto:
    gen = _Gen(draw)
    dims = st.lists(st.integers(1, 4), min_size=1, max_size=3)
    inputs = [f"x{i}" for i in range(draw(st.integers(1, 3)))]
    for name in inputs:
        gen.shapes[name] = tuple(draw(dims))
    for _ in range(draw(st.integers(1, 12))):
        step = draw(st.sampled_from(["unary", "binary", "matmul", "reshape", "transpose",
                                     "concat", "slice", "duplicate", "constant"]))
        if step == "duplicate":
            gen.duplicate()
        elif step == "constant":
            gen.data(tuple(draw(dims)))
        else:
            scalar_ok = step in ("unary", "binary", "reshape")  # the others need an axis
            x = gen.pick(lambda t, scalar_ok=scalar_ok: scalar_ok or len(t) > 0)
            getattr(gen, step)(x, gen.shapes[x])
    outputs = []
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["last", "last", "any", "identity", "input", "repeat", "const"]))
        pool = {"input": inputs, "repeat": outputs, "const": [n for n in gen.shapes if n in gen.consts]}.get(kind)
        if pool:
            outputs.append(draw(st.sampled_from(pool)))
        elif kind == "identity":
            x = gen.pick()  # a graph output made by an Identity: cleanup must keep its name
            outputs.append(gen.emit("Identity", [x], gen.shapes[x]))
        else:
            outputs.append(list(gen.shapes)[-1] if kind == "last" else draw(st.sampled_from(list(gen.shapes))))
    info = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, list(gen.shapes[n]))  # noqa: E731
    graph = helper.make_graph(gen.nodes, "random", [info(n) for n in inputs], [info(n) for n in outputs], gen.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    # A failure here is a generator bug, not a library bug: every shape must agree.
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        got = tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
        if vi.name in gen.shapes:
            assert got == gen.shapes[vi.name], f"generator shape bug at {vi.name}: {got} vs {gen.shapes[vi.name]}"
    return model


@SETTINGS
@given(random_models())
def test_pipeline_keeps_outputs(proto):
    note(onnx.printer.to_text(proto))  # the shrunk failing graph, readable
    model = onnxforge.load(proto)
    before = to_proto(model).SerializeToString()
    result = onnxforge.optimize(model, PIPELINE)
    onnxforge.verify(result.model)
    assert to_proto(model).SerializeToString() == before, "optimize modified its input model"
    optimized = to_proto(result.model)
    onnx.checker.check_model(optimized)
    assert [o.name for o in optimized.graph.output] == [o.name for o in proto.graph.output]
    feeds = sample_inputs(model, seed=0)
    ref, got = run_ort(proto, feeds), run_ort(optimized, feeds)
    assert list(got) == list(ref)
    diff = compare_outputs(ref, got, atol=ATOL, rtol=RTOL)
    assert diff.ok, f"{diff}\n{result}"


@SETTINGS
@given(random_models())
def test_pipeline_reaches_fixed_point(proto):
    note(onnx.printer.to_text(proto))
    first = onnxforge.optimize(onnxforge.load(proto), FIXED_POINT_PIPELINE)
    second = onnxforge.optimize(first.model, FIXED_POINT_PIPELINE)
    assert not second.changed, f"second run still changed the model:\n{second}"
