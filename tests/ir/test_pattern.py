"""The pattern matcher: structure, not names; wildcards, alternatives, constants,
attribute/dtype/rank predicates, single use, shared sub-patterns, backtracking."""
import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxforge
from onnxforge.ir.pattern import Const, Matcher, Op, Opt, Or, Var, attribute, root_op_types
from tests.models import build

T, I = build.tensor, build.init


def load(nodes, inputs, outputs, inits=(), opset=17):
    model = onnxforge.load(build.model(nodes, inputs, outputs, inits, opset=opset, check=False))
    onnxforge.ir.infer_shapes(model)  # rank/dtype predicates read inferred types
    return model, {v.name: v for n in model.graph.nodes for v in n.outputs}


def test_match_by_structure_binds_values_nodes_and_constants():
    model, v = load([helper.make_node("MatMul", ["x", "w"], ["odd_name_1"]),
                     helper.make_node("Add", ["odd_name_1", "b"], ["y"])],
                    [T("x", [2, 3])], [T("y", [2, 4])],
                    [I("w", np.ones((3, 4), np.float32)), I("b", np.arange(4, dtype=np.float32))])
    pattern = Op("Add", Op("MatMul", Var("a"), Const("w"), name="mm"), Const("bias"))
    m = Matcher(model.opset_imports).match(pattern, v["y"])
    assert m is not None
    assert m["a"].name == "x" and m.node("mm").op_type == "MatMul" and m["mm"] is v["odd_name_1"]
    np.testing.assert_array_equal(m.const("bias"), np.arange(4))
    assert [n.op_type for n in m.matched] == ["Add", "MatMul"]
    assert not m.escaping()


def test_commutative_ops_match_either_order_and_non_commutative_do_not():
    model, v = load([helper.make_node("Mul", ["k", "x"], ["y"]), helper.make_node("Sub", ["k", "x"], ["z"])],
                    [T("x", [2])], [T("y", [2]), T("z", [2])], [I("k", np.float32(2.0))])
    matcher = Matcher(model.opset_imports)
    assert matcher.match(Op("Mul", Var("x"), Const("k")), v["y"])["x"].name == "x"
    assert matcher.match(Op("Sub", Var("x"), Const("k")), v["z"]) is None
    assert matcher.match(Op("Sub", Const("k"), Var("x")), v["z"]) is not None


def test_same_name_means_same_value_and_shared_pattern_means_same_node():
    model, v = load([helper.make_node("Neg", ["x"], ["n"]),
                     helper.make_node("Mul", ["x", "n"], ["same"]), helper.make_node("Mul", ["x", "y"], ["other"]),
                     helper.make_node("Mul", ["n", "n"], ["square"])],
                    [T("x", [2]), T("y", [2])], [T("same", [2]), T("other", [2]), T("square", [2])])
    matcher = Matcher(model.opset_imports)
    pattern = Op("Mul", Var("x"), Op("Neg", Var("x")))
    assert matcher.match(pattern, v["same"]) is not None
    assert matcher.match(Op("Mul", Var("x"), Var("x")), v["other"]) is None  # x and y differ
    neg = Op("Neg", Var())
    assert matcher.match(Op("Mul", neg, neg), v["square"]) is not None  # one Neg node, read twice


def test_alternatives_optional_inputs_and_rest():
    model, v = load([helper.make_node("Conv", ["x", "w"], ["c1"]), helper.make_node("Conv", ["c1", "w", "b"], ["c2"]),
                     helper.make_node("Relu", ["c2"], ["y"])],
                    [T("x", [1, 1, 4, 4])], [T("y", None)],
                    [I("w", np.ones((1, 1, 1, 1), np.float32)), I("b", np.zeros(1, np.float32))])
    matcher = Matcher(model.opset_imports)
    conv = Op("Conv", Var("x"), Const("w"), Opt(Const("b")))
    assert matcher.match(conv, v["c1"]) is not None and matcher.match(conv, v["c2"]) is not None
    assert matcher.match(Op("Conv", Var("x"), Const("w")), v["c2"]) is None  # a bias the pattern does not allow
    assert matcher.match(Op("Conv", Var("x"), ...), v["c2"]) is not None
    act = Or(Op("Sigmoid", Var()), Op("Relu", Var("r")))
    assert act.alternatives[1].op_types == ("Relu",)
    assert matcher.match(act, v["y"])["r"] is v["c2"]
    assert matcher.match(Op("Sigmoid", Var()) | Op("Relu", conv), v["y"]) is not None
    assert root_op_types(act) == ("Sigmoid", "Relu")


def test_const_value_and_scalar_predicates():
    model, v = load([helper.make_node("Mul", ["x", "half"], ["a"]), helper.make_node("Mul", ["x", "vec"], ["b"]),
                     helper.make_node("Mul", ["x", "x"], ["c"])],
                    [T("x", [2])], [T("a", [2]), T("b", [2]), T("c", [2])],
                    [I("half", np.float32(0.5)), I("vec", np.array([0.5, 0.5], np.float32))])
    matcher = Matcher(model.opset_imports)
    assert matcher.match(Op("Mul", Var(), Const(value=0.5)), v["a"]) is not None
    assert matcher.match(Op("Mul", Var(), Const(value=0.25)), v["a"]) is None
    assert matcher.match(Op("Mul", Var(), Const(value=0.5, scalar=True)), v["b"]) is None
    assert matcher.match(Op("Mul", Var(), Const()), v["c"]) is None  # x is not a constant


def test_graph_input_with_default_is_not_constant():
    model, v = load([helper.make_node("Mul", ["x", "k"], ["y"])], [T("x", [2]), T("k", [])], [T("y", [2])],
                    [I("k", np.float32(2.0))])
    assert Matcher(model.opset_imports).match(Op("Mul", Var(), Const()), v["y"]) is None


def test_attribute_predicates_use_schema_defaults():
    model, v = load([helper.make_node("Softmax", ["x"], ["a"]), helper.make_node("Softmax", ["x"], ["b"], axis=1),
                     helper.make_node("Gemm", ["x", "x"], ["g"], alpha=2.0)],
                    [T("x", [2, 2])], [T("a", [2, 2]), T("b", [2, 2]), T("g", [2, 2])])
    matcher = Matcher(model.opset_imports)
    assert matcher.match(Op("Softmax", Var(), attrs={"axis": -1}), v["a"]) is not None  # default -1 at opset 13+
    assert matcher.match(Op("Softmax", Var(), attrs={"axis": -1}), v["b"]) is None
    assert matcher.match(Op("Softmax", Var(), attrs={"axis": lambda a: a in (1, -1)}), v["b"]) is not None
    assert matcher.match(Op("Gemm", Var(), Var(), attrs={"alpha": 2.0, "beta": 1.0, "transA": 0}), v["g"]) is not None
    gemm = v["g"].producer
    assert attribute(gemm, "beta", model.opset_imports) == 1.0
    assert attribute(v["a"].producer, "axis", {"": 11}) == 1  # opset 11 default


def test_dtype_rank_single_use_and_where():
    model, v = load([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Neg", ["r"], ["y"]),
                     helper.make_node("Abs", ["r"], ["z"])],
                    [T("x", [2, 3])], [T("y", [2, 3]), T("z", [2, 3])])
    matcher = Matcher(model.opset_imports)
    assert matcher.match(Op("Neg", Var(dtype="float32", rank=2)), v["y"]) is not None
    assert matcher.match(Op("Neg", Var(dtype=TensorProto.INT64)), v["y"]) is None
    assert matcher.match(Op("Neg", Var(rank=(3, 4))), v["y"]) is None
    assert matcher.match(Op("Neg", Op("Relu", Var(), single_use=True)), v["y"]) is None  # r has two readers
    assert matcher.match(Op("Neg", Var(where=lambda value: value.producer.op_type == "Relu")), v["y"]) is not None
    m = matcher.match(Op("Neg", Op("Relu", Var())), v["y"])
    assert [value.name for value in m.escaping()] == ["r"]  # removing the match would lose Abs's input


def test_backtracking_yields_every_way_a_pattern_fits():
    model, v = load([helper.make_node("Add", ["a", "b"], ["y"])], [T("a", [1]), T("b", [1])], [T("y", [1])])
    found = [(m["p"].name, m["q"].name) for m in Matcher(model.opset_imports).matches(Op("Add", Var("p"), Var("q")), v["y"])]
    assert found == [("a", "b"), ("b", "a")]


def test_bad_patterns_are_clear_errors():
    with pytest.raises(TypeError, match="inputs must be patterns"):
        Op("Add", "x", Var())
    with pytest.raises(TypeError, match="rooted at an Op"):
        root_op_types(Var("x"))
