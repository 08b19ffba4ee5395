"""Control flow through the compiler: If with run-time conditions (nested, outer-scope
reads, branches of different shapes), Loop (static and run-time trip counts,
conditions, scan outputs, growing loop-carried values) and Scan, each compiled
with -O0 and checked against onnxruntime; nodes inside branches go through our
converter table and its unsupported-op check."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import onnxforge
from onnxforge.codegen import register_lowering, unregister_lowering
from onnxforge.codegen.lower import lower
from onnxforge.ir import LoweringError

ort = pytest.importorskip("onnxruntime")
OPSET = 17
RTOL, ATOL = 1e-5, 1e-6


def _info(name, dtype=T.FLOAT, shape=None):
    return h.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, initializers=(), opset=OPSET):
    graph = h.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", opset), h.make_opsetid("com.example", 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _const(name, array):
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def _check(model, feeds_list, pkg=None):
    """Compile (once) and compare with onnxruntime on every feed dict."""
    pkg = pkg or onnxforge.compile(onnxforge.load(model), target="x86", pipeline="-O0")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for feeds in feeds_list:
        want = session.run(None, feeds)
        got = pkg(feeds)
        assert list(got) == [o.name for o in session.get_outputs()]
        for (name, g), w in zip(got.items(), want):
            assert g.shape == w.shape, f"{name}: {g.shape} != {w.shape}"
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=ATOL, err_msg=name)
    return pkg


def _rng(seed=0):
    return np.random.default_rng(seed)


# -- If ----------------------------------------------------------------------------
def _if_model():
    """cond = sum(x) > 0 (computed at run time); the branches read a weight (a
    parameter of main), an outer node's output and their own constants."""
    then = h.make_graph([h.make_node("Relu", ["x"], ["t0"], name="then_relu"),
                         h.make_node("MatMul", ["t0", "w"], ["t_out"], name="then_matmul")],
                        "then", [], [_info("t_out", shape=[2, 4])])
    els = h.make_graph([h.make_node("Neg", ["x"], ["e0"], name="else_neg"),
                        h.make_node("MatMul", ["e0", "w"], ["e1"], name="else_matmul"),
                        h.make_node("Add", ["e1", "shift"], ["e_out"], name="else_add")],
                       "else", [], [_info("e_out", shape=[2, 4])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0, name="sum"),
             h.make_node("Greater", ["s", "zero"], ["c"], name="positive"),
             h.make_node("Mul", ["x", "half"], ["xh"], name="outer_mul"),
             h.make_node("ReduceMean", ["xh"], ["shift"], keepdims=1, axes=None, name="outer_mean"),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="if0")]
    w = _rng(1).standard_normal((3, 4)).astype(np.float32)
    return _model(nodes, [_info("x", shape=[2, 3])], [_info("y", shape=[2, 4])],
                  [_const("zero", np.float32(0)), _const("half", np.float32(0.5)), _const("w", w)])


def _feeds_both_signs(shape=(2, 3)):
    x = _rng(2).standard_normal(shape).astype(np.float32)
    return [{"x": np.abs(x)}, {"x": -np.abs(x)}]  # then_branch, else_branch


def test_if_with_run_time_condition_takes_both_branches():
    model = _if_model()
    _check(model, _feeds_both_signs())
    main = lower(onnxforge.load(model)).mod["main"]
    assert "R.If" in main.script() or "if " in main.script()  # a real branch, not both computed


def test_nested_if_reads_values_two_scopes_out():
    inner_then = h.make_graph([h.make_node("Mul", ["x", "k"], ["it"], name="inner_mul")], "inner_then", [],
                              [_info("it", shape=[2, 3])])
    inner_else = h.make_graph([h.make_node("Sub", ["x", "b_local"], ["ie"], name="inner_sub")], "inner_else", [],
                              [_info("ie", shape=[2, 3])])
    outer_then = h.make_graph([
        h.make_node("ReduceMax", ["x"], ["m"], keepdims=0, name="max"),
        h.make_node("Greater", ["m", "one"], ["c2"], name="big"),
        h.make_node("Abs", ["x"], ["b_local"], name="abs"),
        h.make_node("If", ["c2"], ["r"], then_branch=inner_then, else_branch=inner_else, name="if_inner")],
        "outer_then", [], [_info("r", shape=[2, 3])])
    outer_else = h.make_graph([h.make_node("Identity", ["x"], ["oe"], name="ident")], "outer_else", [],
                              [_info("oe", shape=[2, 3])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=outer_then, else_branch=outer_else, name="if_outer")]
    model = _model(nodes, [_info("x", shape=[2, 3])], [_info("y", shape=[2, 3])],
                   [_const("zero", np.float32(0)), _const("one", np.float32(1.0)), _const("k", np.float32(3.0))])
    x = np.array([[0.1, 0.2, 0.3], [0.1, 0.2, 0.05]], np.float32)
    _check(model, [{"x": x}, {"x": x * 10}, {"x": -x}])  # inner else, inner then, outer else


def test_weight_read_only_by_a_nested_branch():
    """The outer branch becomes a function whose parameters include what its
    nested branches read (a weight, a parameter of main)."""
    w = _rng(6).standard_normal((4, 8)).astype(np.float32)
    inner_then = h.make_graph([h.make_node("MatMul", ["x", "w"], ["it"])], "inner_then", [], [_info("it", shape=[2, 8])])
    inner_else = h.make_graph([h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Neg", ["m"], ["ie"])],
                              "inner_else", [], [_info("ie", shape=[2, 8])])
    outer_then = h.make_graph([h.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
                               h.make_node("Greater", ["mx", "one"], ["c2"]),
                               h.make_node("If", ["c2"], ["r"], then_branch=inner_then, else_branch=inner_else)],
                              "outer_then", [], [_info("r", shape=[2, 8])])
    outer_else = h.make_graph([h.make_node("ConstantOfShape", ["shape"], ["oe"], value=h.make_tensor("v", T.FLOAT, [1], [0.5]))],
                              "outer_else", [], [_info("oe", shape=[2, 8])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=outer_then, else_branch=outer_else)]
    model = _model(nodes, [_info("x", shape=[2, 4])], [_info("y", shape=[2, 8])],
                   [_const("zero", np.float32(0)), _const("one", np.float32(1.0)), _const("w", w),
                    _const("shape", np.array([2, 8], np.int64))])
    assert "w" in dict(lower(onnxforge.load(model)).params)
    x = np.abs(_rng(7).standard_normal((2, 4)).astype(np.float32))
    _check(model, [{"x": x}, {"x": x * 0.01}, {"x": -x}])


def test_if_branches_with_different_shapes():
    then = h.make_graph([h.make_node("Identity", ["x"], ["t"])], "then", [], [_info("t", shape=[2, 3])])
    els = h.make_graph([h.make_node("Concat", ["x", "x"], ["e"], axis=0)], "else", [], [_info("e", shape=[4, 3])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="if0"),
             h.make_node("Relu", ["y"], ["z"])]
    model = _model(nodes, [_info("x", shape=[2, 3])], [_info("z", shape=["n", 3])], [_const("zero", np.float32(0))])
    _check(model, _feeds_both_signs())


def _rank_differs_model(declared_rank=True):
    then = h.make_graph([h.make_node("Identity", ["x"], ["t"])], "then", [], [_info("t", shape=[2, 3])])
    els = h.make_graph([h.make_node("Unsqueeze", ["x", "ax"], ["e"])], "else", [], [_info("e", shape=[1, 2, 3])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="if0")]
    graph = h.make_graph(nodes, "g", [_info("x", shape=[2, 3])], [_info("y", shape=[2, 3])],
                         initializer=[_const("zero", np.float32(0)), _const("ax", np.array([0], np.int64))])
    if not declared_rank:
        graph.output[0].type.tensor_type.ClearField("shape")
    return h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)])


def test_if_branches_of_different_rank_without_a_declared_rank_is_a_clear_error():
    with pytest.raises(LoweringError, match=r"If node 'if0': graph output 'y' \(after it\) has rank 2 in then_branch "
                                            r"and 3 in else_branch, and the condition is only known at run time"):
        lower(onnxforge.load(_rank_differs_model(declared_rank=False)))


def test_branch_that_disagrees_with_the_declared_rank_raises_when_taken():
    """The model says y has rank 2: the else_branch (rank 3) becomes a run-time
    error, as onnxruntime would fail on it or give what the model says it never gives."""
    model = _rank_differs_model()
    with pytest.warns(UserWarning, match=r"If node 'if0': its else_branch cannot be compiled \('y' would have rank 3 "
                                         r"where the model declares rank 2\)"):
        pkg = onnxforge.compile(onnxforge.load(model), target="x86", pipeline="-O0")
    positive, negative = _feeds_both_signs()
    _check(model, [positive], pkg)
    with pytest.raises(onnxforge.OnnxforgeError, match=r"If node 'if0': its else_branch cannot be compiled .*the "
                                                       r"condition selected it"):
        pkg(negative)


def test_branches_of_different_rank_continue_separately():
    """torch's squeeze(dim) of a run-time dim: If(x.shape[1] == 1, Squeeze, Identity).
    Each branch gets its own copy of what follows, where the ranks meet again."""
    then = h.make_graph([h.make_node("Squeeze", ["x", "ax1"], ["t"], name="squeeze")], "then", [],
                        [_info("t", shape=[2])])
    els = h.make_graph([h.make_node("Identity", ["x"], ["e"])], "else", [], [_info("e", shape=[2, "n"])])
    nodes = [h.make_node("Shape", ["x"], ["shape"]), h.make_node("Gather", ["shape", "one"], ["n"]),
             h.make_node("Equal", ["n", "one"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="squeeze_if"),
             h.make_node("Mul", ["y", "two"], ["y2"]), h.make_node("ReduceSum", ["y2"], ["z"], keepdims=0)]
    model = _model(nodes, [_info("x", shape=[2, "n"])], [_info("z", shape=[])],
                   [_const("one", np.int64(1)), _const("ax1", np.array([1], np.int64)), _const("two", np.float32(2))])
    rng = _rng(5)
    _check(model, [{"x": rng.standard_normal((2, n)).astype(np.float32)} for n in (1, 3)])


def test_if_condition_known_when_compiling_picks_one_branch():
    """torch's rank tests: If(Size(Shape(x)) == 2, ...) with branches of different
    rank; the condition is static, so only the branch it picks is lowered."""
    then = h.make_graph([h.make_node("Unsqueeze", ["x", "ax"], ["t"])], "then", [], [_info("t", shape=[1, 2, 3])])
    els = h.make_graph([h.make_node("Identity", ["x"], ["e"])], "else", [], [_info("e", shape=[2, 3])])
    nodes = [h.make_node("Shape", ["x"], ["shape"]), h.make_node("Size", ["shape"], ["rank"]),
             h.make_node("Equal", ["rank", "two"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="if0")]
    model = _model(nodes, [_info("x", shape=["a", 3])], [_info("y", shape=[1, "a", 3])],
                   [_const("two", np.int64(2)), _const("ax", np.array([0], np.int64))])
    main = lower(onnxforge.load(model)).mod["main"]
    assert "R.If" not in main.script() and "if " not in main.script()
    _check(model, [{"x": _rng().standard_normal((2, 3)).astype(np.float32)}])


@pytest.fixture
def square_lowering():
    from tvm import relax

    seen = []

    @register_lowering("Square", domain="com.example")
    def square(bb, node, inputs):
        seen.append(node.name)
        return relax.op.multiply(inputs[0], inputs[0])

    yield seen
    unregister_lowering("Square", domain="com.example")


def _custom_op_in_branch(op="Square"):
    then = h.make_graph([h.make_node(op, ["x"], ["t"], domain="com.example", name="branch_square")], "then", [],
                        [_info("t", shape=[2, 3])])
    els = h.make_graph([h.make_node("Neg", ["x"], ["e"], name="else_neg")], "else", [], [_info("e", shape=[2, 3])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="if0")]
    return _model(nodes, [_info("x", shape=[2, 3])], [_info("y", shape=[2, 3])], [_const("zero", np.float32(0))])


def test_registered_lowering_is_used_inside_a_branch(square_lowering):
    pkg = onnxforge.compile(onnxforge.load(_custom_op_in_branch()), target="x86", pipeline="-O0")
    assert "branch_square" in square_lowering  # called with the branch node itself
    for feeds in _feeds_both_signs():
        x = feeds["x"]
        np.testing.assert_allclose(pkg(x=x)["y"], x * x if x.sum() > 0 else -x, rtol=RTOL)


def test_missing_op_inside_a_branch_is_named_with_its_if():
    with pytest.raises(LoweringError, match=r"node 'branch_square' in the then_branch of If node 'if0': no lowering "
                                            r"for op com\.example\.Square; register one with "
                                            r"onnxforge\.codegen\.register_lowering\('Square', domain='com\.example'\)"):
        lower(onnxforge.load(_custom_op_in_branch()))


def test_missing_op_in_a_loop_body_inside_a_branch_names_both():
    body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]),
                         h.make_node("Nope", ["v_in"], ["v_out"], domain="com.example", name="deep")],
                        "body", [_info("i", T.INT64, []), _info("c_in", T.BOOL, []), _info("v_in", shape=[2, 3])],
                        [_info("c_out", T.BOOL, []), _info("v_out", shape=[2, 3])])
    then = h.make_graph([h.make_node("Loop", ["three", "", "x"], ["t"], body=body, name="loop0")], "then", [],
                        [_info("t", shape=[2, 3])])
    els = h.make_graph([h.make_node("Neg", ["x"], ["e"])], "else", [], [_info("e", shape=[2, 3])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0), h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els, name="if0")]
    model = _model(nodes, [_info("x", shape=[2, 3])], [_info("y", shape=[2, 3])],
                   [_const("zero", np.float32(0)), _const("three", np.int64(3))])
    with pytest.raises(LoweringError, match=r"node 'deep' in the body of Loop node 'loop0' in the then_branch of If "
                                            r"node 'if0': no lowering for op com\.example\.Nope"):
        lower(onnxforge.load(model))


# -- Loop --------------------------------------------------------------------------
def _loop_body(with_scan=True, grow=False):
    """v += x * i; scan output v * 2; cond_out = sum(v) < limit. grow: v also gets
    a row appended (its shape changes every iteration)."""
    nodes = [h.make_node("Cast", ["i"], ["fi"], to=T.FLOAT, name="body_cast"),
             h.make_node("Mul", ["x", "fi"], ["xi"], name="body_mul"),
             h.make_node("Add", ["v_in", "xi"], ["v_new"], name="body_add"),
             h.make_node("ReduceSum", ["v_new"], ["s"], keepdims=0),
             h.make_node("Less", ["s", "limit"], ["c_out"])]
    outputs = [_info("c_out", T.BOOL, [])]
    if grow:
        nodes += [h.make_node("Concat", ["rows_in", "x"], ["rows_out"], axis=0)]
    nodes += [h.make_node("Identity", ["v_new"], ["v_out"])]
    outputs.append(_info("v_out", shape=[1, 3]))
    inputs = [_info("i", T.INT64, []), _info("c_in", T.BOOL, []), _info("v_in", shape=[1, 3])]
    if grow:
        inputs.append(_info("rows_in", shape=["r", 3]))
        outputs.append(_info("rows_out", shape=["r2", 3]))
    if with_scan:
        nodes.append(h.make_node("Mul", ["v_new", "two"], ["scan"]))
        outputs.append(_info("scan", shape=[1, 3]))
    return h.make_graph(nodes, "body", inputs, outputs, initializer=[_const("two", np.float32(2))])


def _loop_model(trip=None, cond=None, with_scan=True, grow=False, limit=50.0):
    """trip: "input" (a run-time [1] int64 input), an int (a constant) or None; cond:
    True (a constant initial condition), "input" or None."""
    inputs = [_info("x", shape=[1, 3]), _info("v0", shape=[1, 3])]
    inits = [_const("limit", np.float32(limit))]
    m_name = c_name = ""
    if trip == "input":
        inputs.append(_info("trip", T.INT64, [1]))
        m_name = "trip"
    elif trip is not None:
        inits.append(_const("m", np.int64(trip)))
        m_name = "m"
    nodes = []
    if cond == "input":  # computed at run time: sum(v0) > 0
        nodes += [h.make_node("ReduceSum", ["v0"], ["v0_sum"], keepdims=0),
                  h.make_node("Greater", ["v0_sum", "zero"], ["go"])]
        inits.append(_const("zero", np.float32(0)))
        c_name = "go"
    elif cond is not None:
        inits.append(_const("c0", np.bool_(cond)))
        c_name = "c0"
    carried, outs = ["v0"], [_info("v_final", shape=[1, 3])]
    if grow:
        inits.append(_const("rows0", np.zeros((1, 3), np.float32)))
        carried.append("rows0")
        outs.append(_info("rows", shape=["r", 3]))
    if with_scan:
        outs.append(_info("scans", shape=["n", 1, 3]))
    node = h.make_node("Loop", [m_name, c_name, *carried], [o.name for o in outs], body=_loop_body(with_scan, grow),
                       name="loop0")
    return _model([*nodes, node], inputs, outs, inits)


def _loop_feeds(**extra):
    return {"x": np.array([[1.0, 2.0, 3.0]], np.float32), "v0": np.ones((1, 3), np.float32), **extra}


def test_loop_with_constant_trip_count_and_scan_output():
    _check(_loop_model(trip=4, cond=None), [_loop_feeds()])


def test_loop_with_run_time_trip_count():
    model = _loop_model(trip="input", cond=True, limit=1e30)
    _check(model, [_loop_feeds(trip=np.array([n], np.int64)) for n in (0, 1, 5, 40)])


def test_loop_ended_by_its_condition():
    # no trip count: runs while sum(v) < limit (about 6 iterations here)
    _check(_loop_model(trip=None, cond="input", limit=100.0),
           [_loop_feeds(), _loop_feeds(v0=-np.ones((1, 3), np.float32))])  # initial condition true, false


def test_loop_with_both_trip_count_and_condition():
    model = _loop_model(trip="input", cond="input", limit=100.0)
    _check(model, [_loop_feeds(trip=np.array([n], np.int64)) for n in (2, 50)])


def test_loop_carried_value_that_grows():
    _check(_loop_model(trip="input", cond=True, grow=True, limit=1e30),
           [_loop_feeds(trip=np.array([n], np.int64)) for n in (0, 3, 7)])


def test_loop_without_scan_outputs_runs_many_iterations():
    """The driver's nesting keeps the VM's stack shallow: a plain recursive loop
    overflows the stack after a few thousand iterations."""
    model = _loop_model(trip="input", cond=True, with_scan=False, limit=1e30)
    pkg = onnxforge.compile(onnxforge.load(model), target="x86", pipeline="-O0")
    n = 100_000
    got = pkg(_loop_feeds(trip=np.array([n], np.int64)))["v_final"]
    np.testing.assert_allclose(got, 1 + np.array([[1.0, 2.0, 3.0]]) * (n * (n - 1) / 2), rtol=1e-3)  # float32 sums


def test_loop_body_slicing_at_the_iteration_number():
    """x[i:i+1] inside the body (onnx's test_loop11): the slice has a run-time
    length; the body's declared output shape keeps the loop-carried value static."""
    body = h.make_graph([
        h.make_node("Identity", ["c_in"], ["c_out"]),
        h.make_node("Add", ["i", "one"], ["end"]),
        h.make_node("Unsqueeze", ["i", "axis0"], ["start1"]), h.make_node("Unsqueeze", ["end", "axis0"], ["end1"]),
        h.make_node("Slice", ["table", "start1", "end1"], ["row"]),
        h.make_node("Add", ["y_in", "row"], ["y_out"]), h.make_node("Identity", ["y_out"], ["scan_out"])],
        "body", [_info("i", T.INT64, []), _info("c_in", T.BOOL, []), _info("y_in", shape=[1])],
        [_info("c_out", T.BOOL, []), _info("y_out", shape=[1]), _info("scan_out", shape=[1])],
        initializer=[_const("one", np.int64(1)), _const("axis0", np.array([0], np.int64))])
    model = _model([h.make_node("Loop", ["trip", "", "y0"], ["y", "ys"], body=body, name="loop0")],
                   [_info("y0", shape=[1]), _info("trip", T.INT64, [1])], [_info("y", shape=[1]), _info("ys", shape=["n", 1])],
                   [_const("table", np.arange(1, 6, dtype=np.float32))])
    _check(model, [{"y0": np.zeros(1, np.float32), "trip": np.array([n], np.int64)} for n in (1, 5)])


def test_if_inside_a_loop_body_with_run_time_condition():
    then = h.make_graph([h.make_node("Add", ["v_in", "x"], ["t"])], "then", [], [_info("t", shape=[1, 3])])
    els = h.make_graph([h.make_node("Sub", ["v_in", "x"], ["e"])], "else", [], [_info("e", shape=[1, 3])])
    body = h.make_graph([
        h.make_node("Mod", ["i", "two"], ["parity"]),
        h.make_node("Equal", ["parity", "zero"], ["even"]),
        h.make_node("If", ["even"], ["v_out"], then_branch=then, else_branch=els, name="if_in_loop"),
        h.make_node("Identity", ["c_in"], ["c_out"])],
        "body", [_info("i", T.INT64, []), _info("c_in", T.BOOL, []), _info("v_in", shape=[1, 3])],
        [_info("c_out", T.BOOL, []), _info("v_out", shape=[1, 3])],
        initializer=[_const("two", np.int64(2)), _const("zero", np.int64(0))])
    model = _model([h.make_node("Loop", ["trip", "", "v0"], ["v_final"], body=body, name="loop0")],
                   [_info("x", shape=[1, 3]), _info("v0", shape=[1, 3]), _info("trip", T.INT64, [1])],
                   [_info("v_final", shape=[1, 3])])
    _check(model, [_loop_feeds(trip=np.array([n], np.int64)) for n in (0, 3, 6)])


def test_nested_loops_read_outer_loop_values():
    inner = h.make_graph([h.make_node("Add", ["w_in", "v_in"], ["w_out"]), h.make_node("Identity", ["ci"], ["co"])],
                         "inner", [_info("j", T.INT64, []), _info("ci", T.BOOL, []), _info("w_in", shape=[1, 3])],
                         [_info("co", T.BOOL, []), _info("w_out", shape=[1, 3])])
    outer = h.make_graph([h.make_node("Add", ["i", "one"], ["inner_trip"]),
                          h.make_node("Loop", ["inner_trip", "", "x"], ["v_out"], body=inner, name="inner_loop"),
                          h.make_node("Identity", ["c_in"], ["c_out"])],
                         "outer", [_info("i", T.INT64, []), _info("c_in", T.BOOL, []), _info("v_in", shape=[1, 3])],
                         [_info("c_out", T.BOOL, []), _info("v_out", shape=[1, 3])],
                         initializer=[_const("one", np.int64(1))])
    model = _model([h.make_node("Loop", ["trip", "", "v0"], ["v_final"], body=outer, name="outer_loop")],
                   [_info("x", shape=[1, 3]), _info("v0", shape=[1, 3]), _info("trip", T.INT64, [1])],
                   [_info("v_final", shape=[1, 3])])
    _check(model, [_loop_feeds(trip=np.array([n], np.int64)) for n in (0, 1, 4)])


# -- Scan --------------------------------------------------------------------------
def _scan_model(input_dirs=None, output_dirs=None, output_axes=None, input_axes=None):
    """Running sum over the sequence: state += x_t * w; scan outputs state and x_t."""
    body = h.make_graph([h.make_node("Mul", ["x_t", "w"], ["xw"]),
                         h.make_node("Add", ["s_in", "xw"], ["s_out"]),
                         h.make_node("Identity", ["s_out"], ["y_t"]),
                         h.make_node("Neg", ["z_t"], ["z_out"])],
                        "body", [_info("s_in", shape=[4]), _info("x_t", shape=[4]), _info("z_t", shape=[4])],
                        [_info("s_out", shape=[4]), _info("y_t", shape=[4]), _info("z_out", shape=[4])])
    attrs = {"num_scan_inputs": 2}
    for key, value in (("scan_input_directions", input_dirs), ("scan_output_directions", output_dirs),
                       ("scan_output_axes", output_axes), ("scan_input_axes", input_axes)):
        if value is not None:
            attrs[key] = value
    x_shape = [5, 4] if not input_axes or input_axes[0] == 0 else [4, 5]
    node = h.make_node("Scan", ["s0", "xs", "zs"], ["s_final", "ys", "zs_out"], body=body, name="scan0", **attrs)
    return _model([node], [_info("s0", shape=[4]), _info("xs", shape=x_shape), _info("zs", shape=[5, 4])],
                  [_info("s_final", shape=[4]), _info("ys", shape=["a", "b"]), _info("zs_out", shape=["c", "d"])],
                  [_const("w", np.linspace(0.5, 2, 4).astype(np.float32))])


def _scan_feeds(x_shape=(5, 4)):
    rng = _rng(3)
    return [{"s0": rng.standard_normal(4).astype(np.float32), "xs": rng.standard_normal(x_shape).astype(np.float32),
             "zs": rng.standard_normal((5, 4)).astype(np.float32)}]


def test_scan_forward():
    _check(_scan_model(), _scan_feeds())


def test_scan_reverse_directions_and_output_axis():
    _check(_scan_model(input_dirs=[1, 0], output_dirs=[0, 1], output_axes=[1, -1]), _scan_feeds())


def test_scan_input_axis():
    _check(_scan_model(input_axes=[1, 0]), _scan_feeds((4, 5)))


def test_scan_with_symbolic_sequence_length():
    body = h.make_graph([h.make_node("Add", ["s_in", "x_t"], ["s_out"]), h.make_node("Relu", ["s_out"], ["y_t"])],
                        "body", [_info("s_in", shape=[2]), _info("x_t", shape=[2])],
                        [_info("s_out", shape=[2]), _info("y_t", shape=[2])])
    node = h.make_node("Scan", ["s0", "xs"], ["s_final", "ys"], body=body, num_scan_inputs=1, name="scan0")
    model = _model([node], [_info("s0", shape=[2]), _info("xs", shape=["seq", 2])],
                   [_info("s_final", shape=[2]), _info("ys", shape=["seq", 2])])
    rng = _rng(4)
    pkg = _check(model, [{"s0": np.zeros(2, np.float32), "xs": rng.standard_normal((n, 2)).astype(np.float32)}
                         for n in (1, 7)])
    assert pkg is not None


# -- IR round trip -------------------------------------------------------------------
@pytest.mark.parametrize("build", [_if_model, lambda: _loop_model(trip="input", cond=True, grow=True),
                                   lambda: _scan_model(input_dirs=[1, 0], output_axes=[1, 0])])
def test_ir_round_trip_keeps_control_flow(build, tmp_path):
    model = build()
    path = tmp_path / "m.onnx"
    onnxforge.save(onnxforge.load(model), path)
    again = onnx.load(str(path))
    onnx.checker.check_model(again)
    ops = sorted(n.op_type for n in again.graph.node)
    assert ops == sorted(n.op_type for n in model.graph.node)
    for node, before in zip(again.graph.node, model.graph.node):
        assert [a.name for a in node.attribute] == [a.name for a in before.attribute]
