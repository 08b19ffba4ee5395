"""Use-def links stay consistent through every mutation method."""
import numpy as np
import pytest

import onnxforge
from onnxforge.ir import VerifierError
from tests.models import build


def _load():
    return onnxforge.load(build.mlp())


def test_uses_point_both_ways():
    m = _load()
    x = m.graph.inputs[0]
    assert [(n.op_type, i) for n, i in x.uses] == [("MatMul", 0)]
    onnxforge.verify(m)


def test_set_input_moves_the_use():
    m = _load()
    relu = m.graph.nodes[2]
    hb, h = relu.inputs[0], m.graph.nodes[0].outputs[0]
    relu.set_input(0, h)
    assert not any(n is relu for n, _ in hb.uses) and any(n is relu for n, _ in h.uses)
    onnxforge.verify(m)


def test_remove_node_with_users_is_an_error():
    m = _load()
    with pytest.raises(VerifierError, match="still used"):
        m.graph.remove_node(m.graph.nodes[0])


def test_replace_all_uses_keeps_graph_output_name():
    m = _load()
    g = m.graph
    y = g.outputs[0]
    relu_out = g.nodes[2].outputs[0]
    neg = g.make_node("Neg", [relu_out], after=g.nodes[2])
    g.replace_all_uses(y, neg.outputs[0])
    assert g.outputs[0] is neg.outputs[0] and g.outputs[0].name == "y"
    g.remove_node(y.producer)
    g.sort()
    onnxforge.verify(m)


def test_replace_output_by_graph_input_inserts_identity():
    m = _load()
    g = m.graph
    g.replace_all_uses(g.outputs[0], g.inputs[0])
    assert g.outputs[0].name == "y" and g.outputs[0].producer.op_type == "Identity"
    onnxforge.verify(m)


def test_fresh_names_never_collide():
    m = _load()
    names = {m.graph.fresh_name("h") for _ in range(50)}
    assert len(names) == 50 and "h" not in names


def test_verifier_catches_broken_links():
    m = _load()
    m.graph.nodes[1]._inputs[0] = m.graph.inputs[0]  # bypassing the methods
    with pytest.raises(VerifierError, match="use"):
        onnxforge.verify(m)


def test_verifier_catches_order():
    m = _load()
    m.graph.nodes.reverse()
    with pytest.raises(VerifierError, match="not defined before"):
        onnxforge.verify(m)
    m.graph.sort()
    onnxforge.verify(m)


def test_clone_is_independent():
    m = _load()
    c = m.clone()
    c.graph.nodes[2].set_input(0, c.graph.nodes[0].outputs[0])
    c.graph.initializers["w1"].set_array(np.zeros((8, 16), np.float32))
    onnxforge.verify(m)
    onnxforge.verify(c)
    assert m.graph.nodes[2].inputs[0].name == "hb"
    assert m.graph.initializers["w1"].array.any()
