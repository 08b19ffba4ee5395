"""Shapes computed at run time, as exporters write them: a Reshape target built
from the input's own Shape (through Cast, Slice, Concat) keeps the input's
symbolic dims; an Expand to a shape read off a tensor keeps its dims; a broadcast
against fresh dims lowers; a detection head's anchor grid builds unpinned next to
packed weights; and uses of dims bound mid-function stay after the match_cast that
binds them, whatever fusion did."""
import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.runtime.vm import VirtualMachine

import onnxforge
from onnxforge.codegen.lower import lower
from onnxforge.codegen.shape_reads import order_dim_reads
from onnxforge.ir import from_proto
from onnxforge.passes.check import run_ort

F, I32, I64 = TensorProto.FLOAT, TensorProto.INT32, TensorProto.INT64


def _const(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def paddle_heads_model() -> onnx.ModelProto:
    """x [batch, seq, 24] -> qkv [batch, seq, 72] -> Reshape to [0, seq, 3, 4, 6] where
    seq is Shape -> Cast int32 -> Slice -> Cast int64 (Paddle's form) -> Transpose ->
    Gather q -> [batch, 4, seq, 6], plus a residual over the reshaped-back value."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((24, 72)).astype(np.float32) * 0.2, "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["qkv"]),
        helper.make_node("Shape", ["qkv"], ["shp"]),
        helper.make_node("Cast", ["shp"], ["shp32"], to=I32),
        helper.make_node("Slice", ["shp32", "one", "two"], ["seq32"]),
        helper.make_node("Cast", ["seq32"], ["seq"], to=I64),
        helper.make_node("Concat", ["zero", "seq", "heads"], ["target"], axis=0),
        helper.make_node("Reshape", ["qkv", "target"], ["r"]),
        helper.make_node("Transpose", ["r"], ["t"], perm=[2, 0, 3, 1, 4]),
        helper.make_node("Gather", ["t", "idx"], ["q"], axis=0),
        helper.make_node("Reshape", ["qkv", "back"], ["flat"]),
        helper.make_node("Add", ["flat", "qkv"], ["y"]),
    ]
    inits = [w, _const("one", [1]), _const("two", [2]), _const("zero", [0]), _const("heads", [3, 4, 6]),
             _const("idx", 0), _const("back", [0, -1, 72])]
    graph = helper.make_graph(nodes, "heads", [helper.make_tensor_value_info("x", F, ["batch", "seq", 24])],
                              [helper.make_tensor_value_info("q", F, None), helper.make_tensor_value_info("y", F, None)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_reshape_target_computed_from_the_shape_keeps_the_symbolic_dims():
    text = lower(from_proto(paddle_heads_model())).mod["main"].script(show_meta=False)
    assert "reshape_dim" not in text  # no fresh dims: the target was evaluated over (batch, seq)
    assert "T.int64()" in text or "batch" in text


@pytest.fixture(scope="module")
def heads_package(tmp_path_factory):
    return onnxforge.compile(paddle_heads_model(), "x86", "-O0", output=tmp_path_factory.mktemp("p") / "heads.ofpkg")


@pytest.mark.parametrize("shape", [(1, 5, 24), (3, 11, 24)])
def test_the_unpinned_package_matches_onnxruntime(heads_package, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = run_ort(paddle_heads_model(), {"x": x})
    got = heads_package(x=x)
    for name in ("q", "y"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5)


def fresh_dims_model() -> onnx.ModelProto:
    """y = Reshape(Relu(x), t) + x with t a graph input: the reshape's dims are only
    known at run time, so the Add broadcasts fresh dims against (batch, seq, 8)."""
    nodes = [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Reshape", ["h", "t"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["y"]), helper.make_node("Shape", ["y"], ["ys"])]
    graph = helper.make_graph(nodes, "fresh", [helper.make_tensor_value_info("x", F, ["batch", "seq", 8]),
                                               helper.make_tensor_value_info("t", I64, [3])],
                              [helper.make_tensor_value_info("y", F, None), helper.make_tensor_value_info("ys", I64, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_broadcast_against_run_time_dims_builds_and_runs(tmp_path):
    pkg = onnxforge.compile(fresh_dims_model(), "x86", "-O0", output=tmp_path / "fresh.ofpkg")
    rng = np.random.default_rng(2)
    for shape, target in [((2, 3, 8), [2, 3, 8]), ((1, 4, 8), [1, 4, 8]), ((2, 6, 8), [2, 6, 8])]:
        x = rng.standard_normal(shape).astype(np.float32)
        feeds = {"x": x, "t": np.array(target, np.int64)}
        want, got = run_ort(fresh_dims_model(), feeds), pkg(**feeds)
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-6)
        np.testing.assert_array_equal(got["ys"], want["ys"])


def anchor_grid_model(lengths: str) -> onnx.ModelProto:
    """A detection head as YOLOv8 exports it, in small: y = Conv(x) (x [1, 3, H, W]),
    an anchor grid from y's own H and W (Range -> Reshape to (H, 1) and (1, W) ->
    Expand both to (H, W) -> Unsqueeze -> Concat -> Reshape (-1, 2)), and a Concat of
    y with an upsampled strided branch (H next to 2 * ((H - 1) // 2 + 1)).
    lengths="gather": Range limits from Shape -> Gather of a scalar index (the
    export's form; the grid's dims are H and W at compile time); "squeeze": through
    a Squeeze of a 1-element Gather, which leaves the Range lengths to run time, so
    each Expand resolves its target when the model runs."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * 0.1, "w2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             _const("zero", 0), _const("one", 1), _const("ones", [1]), _const("ax0", [0]), _const("last", [-1]),
             _const("pairs", [-1, 2])]
    if lengths == "gather":
        inits += [_const("i2", 2), _const("i3", 3)]
        limits = [helper.make_node("Gather", ["sh", "i2"], ["hs"], axis=0),
                  helper.make_node("Gather", ["sh", "i3"], ["ws"], axis=0),
                  helper.make_node("Unsqueeze", ["hs", "ax0"], ["hh"]), helper.make_node("Unsqueeze", ["ws", "ax0"], ["ww"])]
    else:
        inits += [_const("i2", [2]), _const("i3", [3])]
        limits = [helper.make_node("Gather", ["sh", "i2"], ["hh"], axis=0),
                  helper.make_node("Gather", ["sh", "i3"], ["ww"], axis=0),
                  helper.make_node("Squeeze", ["hh", "ax0"], ["hs"]), helper.make_node("Squeeze", ["ww", "ax0"], ["ws"])]
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["y", "w2"], ["ys"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Resize", ["ys", "", "scales"], ["up"], mode="nearest"),
             helper.make_node("Concat", ["y", "up"], ["cat"], axis=1),
             helper.make_node("Shape", ["y"], ["sh"]), *limits,
             helper.make_node("Range", ["zero", "hs", "one"], ["rh"]), helper.make_node("Range", ["zero", "ws", "one"], ["rw"]),
             helper.make_node("Cast", ["rh"], ["fh"], to=F), helper.make_node("Cast", ["rw"], ["fw"], to=F),
             helper.make_node("Concat", ["hh", "ones"], ["h1"], axis=0), helper.make_node("Concat", ["ones", "ww"], ["w1"], axis=0),
             helper.make_node("Reshape", ["fh", "h1"], ["gh"]), helper.make_node("Reshape", ["fw", "w1"], ["gw"]),
             helper.make_node("Concat", ["hh", "ww"], ["hw"], axis=0),
             helper.make_node("Expand", ["gh", "hw"], ["eh"]), helper.make_node("Expand", ["gw", "hw"], ["ew"]),
             helper.make_node("Unsqueeze", ["ew", "last"], ["uw"]), helper.make_node("Unsqueeze", ["eh", "last"], ["uh"]),
             helper.make_node("Concat", ["uw", "uh"], ["g"], axis=-1),
             helper.make_node("Reshape", ["g", "pairs"], ["grid"])]
    graph = helper.make_graph(nodes, "anchors", [helper.make_tensor_value_info("x", F, [1, 3, "H", "W"])],
                              [helper.make_tensor_value_info("grid", F, ["G", 2]),
                               helper.make_tensor_value_info("cat", F, [1, 32, "H", "W"])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_expand_to_the_shape_of_a_tensor_keeps_its_dims():
    text = lower(from_proto(anchor_grid_model("gather"))).mod["main"].script(show_meta=False)
    assert "broadcast_to" in text and "expand_dim_" not in text  # no fresh dims: (H, W) at compile time


@pytest.mark.parametrize("lengths", ["gather", "squeeze"])
def test_an_unpinned_anchor_grid_next_to_packed_convolutions_builds_and_matches(lengths, tmp_path):
    # -O2 packs the convolutions' weights, so the build lifts them into main_transform_params (TVM's
    # LiftTransformParams), whose binding canonicalization lost this graph's shapes before
    model = anchor_grid_model(lengths)
    pkg = onnxforge.compile(model, "x86", "-O2", output=tmp_path / "anchors.ofpkg")
    assert pkg.manifest.get("transform_params") is True
    for hw in ((8, 12), (6, 10)):
        x = np.random.default_rng(hw[0]).standard_normal((1, 3, *hw)).astype(np.float32)
        want, got = run_ort(model, {"x": x}), pkg(x=x)
        assert got["grid"].shape == (hw[0] * hw[1], 2)
        np.testing.assert_array_equal(got["grid"], want["grid"])
        np.testing.assert_allclose(got["cat"], want["cat"], rtol=1e-4, atol=1e-4)


def _reshape_after_match_cast() -> tvm.IRModule:
    """main(x [n, 4], s [2]): z = reshape(x, s) with z's dims (a, b) bound by a
    match_cast of s's values; legalized, so the reshape kernel reads a and b as
    plain integers."""
    bb = relax.BlockBuilder()
    n = tvm.tirx.Var("n", "int64")
    a, b = tvm.tirx.Var("a", "int64"), tvm.tirx.Var("b", "int64")
    x = relax.Var("x", relax.TensorType([n, 4], "float32"))
    s = relax.Var("s", relax.TensorType([2], "int64"))
    with bb.function("main", [x, s]):
        with bb.dataflow():
            shape = bb.emit(relax.op.tensor_to_shape(s))
            bb.match_cast(shape, relax.ShapeType([a, b]))
            z = bb.emit(relax.op.reshape(x, relax.ShapeExpr([a, b])))
            out = bb.emit_output(relax.op.multiply(z, z))
        bb.emit_func_output(out)
    return relax.transform.LegalizeOps()(bb.get())


def _swap_first_use_before_match_cast(mod: tvm.IRModule) -> tvm.IRModule:
    """What FuseOps may do: move the reshape kernel above the match_cast."""
    func = mod["main"]
    block = func.body.blocks[0]
    bindings = list(block.bindings)
    cast = next(i for i, bd in enumerate(bindings) if isinstance(bd, relax.MatchCast))
    bindings.insert(cast, bindings.pop(cast + 1))
    body = relax.SeqExpr([relax.DataflowBlock(bindings)], func.body.body)
    mod = tvm.IRModule(dict(mod.functions_items()))
    mod["main"] = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    return mod


def test_dim_uses_move_back_after_their_match_cast():
    bad = _swap_first_use_before_match_cast(_reshape_after_match_cast())
    bindings = list(bad["main"].body.blocks[0].bindings)
    assert not isinstance(bindings[1], relax.MatchCast)  # the reshape now reads a, b before they are bound
    fixed = order_dim_reads(bad)
    order = list(fixed["main"].body.blocks[0].bindings)
    cast = next(i for i, bd in enumerate(order) if isinstance(bd, relax.MatchCast))
    reshape = next(i for i, bd in enumerate(order) if "reshape" in str(bd.value))
    assert cast < reshape
    executable = tvm.compile(fixed, "llvm")
    vm = VirtualMachine(executable, tvm.cpu())
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = vm["main"](tvm.runtime.tensor(x), tvm.runtime.tensor(np.array([2, 6], np.int64))).numpy()
    np.testing.assert_array_equal(got, (x * x).reshape(2, 6))


def test_a_valid_order_is_left_alone():
    mod = _reshape_after_match_cast()
    assert order_dim_reads(mod).same_as(mod)
