"""Incremental shape inference (ir/shape_update.py): after value-preserving passes
only what changed is inferred again, and the result is what a full run gives."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxforge.ir.shapes as shapes_mod
from onnxforge.ir import from_proto
from onnxforge.passes import optimize
from tests.models.fusion import attention
from tests.models.pruning import convnet

F = TensorProto.FLOAT


def _runtime_reshape_model(layers: int = 3):
    """torch-exporter style: view(x.size(0), x.size(1), heads, -1) with the target
    built from Shape -> Gather -> Unsqueeze -> Concat, on symbolic batch/seq."""
    nodes, inits = [], []
    x = "x"
    for i in range(layers):
        w = f"w{i}"
        inits.append(helper.make_tensor(w, F, [16, 16], np.random.default_rng(i).standard_normal(256).astype(np.float32)))
        nodes += [
            helper.make_node("MatMul", [x, w], [f"p{i}"]),
            helper.make_node("Shape", [f"p{i}"], [f"s{i}"]),
            helper.make_node("Gather", [f"s{i}", "zero"], [f"b{i}"], axis=0),
            helper.make_node("Gather", [f"s{i}", "one"], [f"t{i}"], axis=0),
            helper.make_node("Unsqueeze", [f"b{i}", "axes0"], [f"bu{i}"]),
            helper.make_node("Unsqueeze", [f"t{i}", "axes0"], [f"tu{i}"]),
            helper.make_node("Concat", [f"bu{i}", f"tu{i}", "heads"], [f"target{i}"], axis=0),
            helper.make_node("Reshape", [f"p{i}", f"target{i}"], [f"r{i}"]),
            helper.make_node("Identity", [f"r{i}"], [f"id{i}"]),
            helper.make_node("Reshape", [f"id{i}", "flat"], [f"y{i}"]),
            helper.make_node("Relu", [f"y{i}"], [f"a{i}"]),
        ]
        x = f"a{i}"
    consts = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "axes0": np.array([0], np.int64),
              "heads": np.array([4, -1], np.int64), "flat": np.array([0, 0, 16], np.int64)}
    inits += [helper.make_tensor(k, TensorProto.INT64, v.shape, v.ravel()) for k, v in consts.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, ["batch", "seq", 16])],
                              [helper.make_tensor_value_info(x, F, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _symbolic_image_convnet():
    proto = convnet()
    del proto.graph.input[0].type.tensor_type.shape.dim[2:]
    for name in ("height", "width"):
        proto.graph.input[0].type.tensor_type.shape.dim.add().dim_param = name
    return proto


def _signature(model):
    """Op sequence and every value's dtype/shape, unknown dims (unk__*) made equal."""
    def dims(shape):
        return None if shape is None else tuple("?" if isinstance(d, str) and d.startswith("unk__") else d for d in shape)
    return [(n.op_type, tuple((v.dtype, dims(v.shape)) for v in n.outputs)) for g in model.graph.all_graphs()
            for n in g.nodes]


MODELS = {
    "runtime-reshape": _runtime_reshape_model,
    "attention": lambda: attention(layers=2)[0],
    "convnet-symbolic-image": _symbolic_image_convnet,
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_incremental_inference_gives_what_full_runs_give(name, monkeypatch):
    model = from_proto(MODELS[name]())
    incremental = optimize(model, "-O2").model
    monkeypatch.setattr(shapes_mod, "infer_changed", lambda m, known: None)  # every run a full one
    full = optimize(model, "-O2").model
    assert _signature(incremental) == _signature(full)


def test_only_changed_nodes_are_inferred_again(monkeypatch):
    sizes = []
    real = onnx.shape_inference.infer_shapes

    def counting(proto, *args, **kwargs):
        sizes.append(len(proto.graph.node))
        return real(proto, *args, **kwargs)

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", counting)
    model = from_proto(_runtime_reshape_model(layers=4))
    result = optimize(model, "-O2")
    assert sizes and sizes[0] == len(model.graph.nodes)  # the first run sees the whole graph
    assert len(sizes) > 1 and max(sizes[1:]) < sizes[0]  # later ones only what passes changed
    # the reshape pairs cancel once their run-time targets are known: MatMul -> Relu is left
    assert [n.op_type for n in result.model.graph.nodes] == ["MatMul", "Relu"] * 4
    assert all(v.shape == ("batch", "seq", 16) for n in result.model.graph.nodes for v in n.outputs)


def test_changed_graph_input_means_a_full_run():
    model = from_proto(_runtime_reshape_model(layers=1))
    shapes_mod.infer_shapes(model)
    assert model.shape_stamps is not None
    model.graph.inputs[0].shape = (2, 5, 16)  # pinned
    assert shapes_mod.infer_changed(model, model.shape_stamps) is None
    shapes_mod.infer_shapes(model)
    assert model.graph.nodes[0].outputs[0].shape == (2, 5, 16)


def test_symbolic_step_runs_where_unknown_dims_can_matter(monkeypatch):
    calls = []
    real = shapes_mod.infer_shapes_symbolic
    monkeypatch.setattr(shapes_mod, "infer_shapes_symbolic", lambda m, t=None: calls.append(1) or real(m, t))
    conv = from_proto(_symbolic_image_convnet())
    shapes_mod.infer_all_shapes(conv, symbolic="auto")  # spatial dims only reach Conv/Relu/Add...
    assert not calls
    shapes_mod.infer_all_shapes(conv, symbolic="always")
    assert calls
    calls.clear()
    reshape = from_proto(_runtime_reshape_model(layers=1))
    shapes_mod.infer_all_shapes(reshape, symbolic="auto")  # ... a Reshape reads its output
    assert calls


def test_symbolic_step_sees_only_the_nodes_the_unknown_dims_depend_on(monkeypatch):
    """A conv net of any batch and image size with a head that flattens through a
    run-time shape (PaddleOCR's classifier): the symbolic tool is given the head's
    shape chain alone, not the backbone, and the head's dims come out named."""
    proto = _symbolic_image_convnet()
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "batch"
    del proto.graph.output[:]
    flatten = next(n for n in proto.graph.node if n.op_type == "Flatten")
    pooled = flatten.input[0]
    keep = list(proto.graph.node)[:list(proto.graph.node).index(flatten)]
    del proto.graph.node[:]
    proto.graph.node.extend(keep + [
        helper.make_node("Shape", [pooled], ["shape"]),
        helper.make_node("Cast", ["shape"], ["shape32"], to=TensorProto.INT32),
        helper.make_node("Slice", ["shape32", "zero", "one"], ["batch32"]),
        helper.make_node("Cast", ["batch32"], ["batch64"], to=TensorProto.INT64),
        helper.make_node("Concat", ["batch64", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", [pooled, "target"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ])
    channels = next(i for i in proto.graph.initializer if i.name == "w_81").dims[1]
    proto.graph.initializer.extend([
        helper.make_tensor("zero", TensorProto.INT32, [1], [0]), helper.make_tensor("one", TensorProto.INT32, [1], [1]),
        helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1]),
        helper.make_tensor("head", F, [channels, 2], np.ones(channels * 2, np.float32))])
    proto.graph.output.append(helper.make_tensor_value_info("probs", F, None))
    model = from_proto(proto)
    shapes_mod.infer_shapes(model)
    flat = next(v for n in model.graph.nodes for v in n.outputs if v.name == "flat")
    assert not shapes_mod.known_shape(flat.shape)  # onnx's data propagation stops at the int32 Cast
    seen = []
    real = shapes_mod._run_symbolic_tool
    monkeypatch.setattr(shapes_mod, "_run_symbolic_tool", lambda p: seen.append(len(p.graph.node)) or real(p))
    shapes_mod.infer_all_shapes(model, symbolic="auto")
    assert flat.shape == ("batch", channels)
    assert next(v for n in model.graph.nodes for v in n.outputs if v.name == "probs").shape == ("batch", 2)
    assert seen and seen[0] < 10 < len(model.graph.nodes)  # the head's chain, not the backbone


def test_symbolic_step_infers_an_if_output_through_its_branches():
    """A dim reader (Softmax) after an If whose branches reshape through a run-time
    shape: the If goes to the tool whole, with the outer value its branches read; its
    own output keeps onnx's shape (the tool picks one branch's where they disagree)."""
    def branch(name, op):
        return helper.make_graph([
            helper.make_node(op, ["x"], [f"{name}_act"]),
            helper.make_node("Shape", [f"{name}_act"], [f"{name}_shape"]),
            helper.make_node("Cast", [f"{name}_shape"], [f"{name}_s32"], to=TensorProto.INT32),
            helper.make_node("Slice", [f"{name}_s32", "zero", "one"], [f"{name}_b32"]),
            helper.make_node("Cast", [f"{name}_b32"], [f"{name}_b64"], to=TensorProto.INT64),
            helper.make_node("Concat", [f"{name}_b64", "minus_one"], [f"{name}_target"], axis=0),
            helper.make_node("Reshape", [f"{name}_act", f"{name}_target"], [f"{name}_out"]),
        ], name, [], [helper.make_tensor_value_info(f"{name}_out", F, None)])

    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", "Relu"), else_branch=branch("else", "Neg")),
         helper.make_node("MatMul", ["y", "w"], ["z"]), helper.make_node("Softmax", ["z"], ["p"])],
        "g", [helper.make_tensor_value_info("x", F, ["batch", 4, 4]), helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("p", F, None)],
        [helper.make_tensor("zero", TensorProto.INT32, [1], [0]), helper.make_tensor("one", TensorProto.INT32, [1], [1]),
         helper.make_tensor("minus_one", TensorProto.INT64, [1], [-1]),
         helper.make_tensor("w", F, [16, 3], np.ones(48, np.float32))])
    model = from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    shapes_mod.infer_all_shapes(model, symbolic="auto")
    assert model.graph.nodes[1].outputs[0].shape == ("batch", 3)
    assert model.graph.nodes[0].outputs[0].shape is None
