"""onnx-graphsurgeon interop: IR <-> gs.Graph, and gs functions run as passes."""
from collections import Counter

import numpy as np
import onnx_graphsurgeon as gs
from onnx import helper

import onnxforge
from onnxforge.passes import GraphSurgeonPass, from_graphsurgeon, graphsurgeon_pass, register_pass, registry, to_graphsurgeon
from onnxforge.passes.check import compare_outputs, run_ort, sample_inputs
from tests.conftest import run_and_check
from tests.models import build

T = build.tensor


def _with_identities():
    return build.model([
        helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Identity", ["h"], ["h_copy"]),
        helper.make_node("Relu", ["h_copy"], ["r"]), helper.make_node("Identity", ["r"], ["y"]),
    ], [T("x", [2, 3])], [T("y", [2, 4])], [build.init("w", np.ones((3, 4), np.float32))])


def test_round_trip_through_graphsurgeon_keeps_outputs_and_metadata():
    model = onnxforge.load(build.with_metadata())
    again = from_graphsurgeon(to_graphsurgeon(model), like=model)
    onnxforge.verify(again)
    feeds = sample_inputs(model)
    assert compare_outputs(run_ort(model, feeds), run_ort(again, feeds), 0, 0).ok
    assert again.metadata_props == model.metadata_props and again.producer_name == "tests"


def test_graphsurgeon_function_as_a_registered_pass(cleanup_registry):
    @graphsurgeon_pass("test-gs-strip-identity")
    def strip_identity(graph: gs.Graph) -> None:
        """The graphsurgeon idiom: the producer takes over the Identity's outputs."""
        for node in [n for n in graph.nodes if n.op == "Identity"]:
            producer = node.inputs[0].inputs[0]
            producer.outputs = node.outputs
            node.outputs = []
        graph.cleanup().toposort()

    assert issubclass(strip_identity, GraphSurgeonPass)
    result = run_and_check(_with_identities(), "test-gs-strip-identity")
    assert Counter(n.op_type for n in result.model.graph.nodes) == Counter({"MatMul": 1, "Relu": 1})
    assert [v.name for v in result.model.graph.outputs] == ["y"]
    assert result.records[0].stats == {"nodes_delta": -2}


def test_function_that_changes_nothing_reports_no_change(cleanup_registry):
    graphsurgeon_pass("test-gs-look", lambda graph: None, doc="Looks only.")
    assert not onnxforge.optimize(onnxforge.load(_with_identities()), "test-gs-look").changed
    assert registry.get_pass("test-gs-look").__doc__ == "Looks only."


def test_subclass_with_a_function_returning_a_new_graph(cleanup_registry):
    def relu_to_leaky(graph: gs.Graph) -> gs.Graph:
        new = graph.copy()
        for node in new.nodes:
            if node.op == "Relu":
                node.op, node.attrs = "LeakyRelu", {"alpha": 0.0}
        return new

    @register_pass("test-gs-leaky")
    class ReluToLeaky(GraphSurgeonPass):
        function = staticmethod(relu_to_leaky)

    result = run_and_check(_with_identities(), "test-gs-leaky")
    assert "LeakyRelu" in {n.op_type for n in result.model.graph.nodes}
