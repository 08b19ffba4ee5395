"""Load -> save must be lossless: checker accepts it, onnxruntime gives bitwise
identical outputs, and what we do not understand is carried through untouched."""
import os
import random

import numpy as np
import onnx
import pytest

import onnxforge
from onnxforge.tools.roundtrip import backend_models, check_file_or_proto
from tests.models import build

SAMPLE = random.Random(0)


def _sample():
    items = backend_models()
    light = [i for i in items if i[0].startswith("light_")]
    rest = [i for i in items if not i[0].startswith("light_")]
    return light + SAMPLE.sample(rest, 120)


@pytest.mark.parametrize("item", _sample(), ids=lambda i: i[0])
def test_backend_models_round_trip(item):
    name, source, inputs = item
    result = check_file_or_proto(name, source, inputs)
    assert result.status in ("identical", "ort-cannot-run-original"), result.detail
    if result.status == "ort-cannot-run-original":
        pytest.skip(f"onnxruntime cannot run the original: {result.detail[:80]}")


@pytest.mark.parametrize("builder", [build.mlp, build.with_if_and_loop, build.with_metadata])
def test_built_models_round_trip(builder):
    assert check_file_or_proto(builder.__name__, builder()).status == "identical"


def test_subgraphs_keep_outer_reads(tmp_path):
    m = onnxforge.load(build.with_if_and_loop())
    x = m.graph.inputs[0]
    users = {node.op_type for node, _ in x.uses}
    assert {"Add", "Mul"} <= users  # the If branches read x from the outer scope
    onnxforge.save(m, tmp_path / "m.onnx")
    onnx.checker.check_model(str(tmp_path / "m.onnx"))


def test_custom_ops_and_functions_carried_untouched(tmp_path):
    proto = build.with_custom_op_and_function()
    m = onnxforge.load(proto)
    result = onnxforge.optimize(m, "-O1")
    onnxforge.save(result.model, tmp_path / "m.onnx")
    saved = onnx.load(tmp_path / "m.onnx")
    assert saved.functions[0].SerializeToString() == proto.functions[0].SerializeToString()
    vendor = [n for n in saved.graph.node if n.domain == "com.vendor"][0]
    assert vendor.SerializeToString() == proto.graph.node[1].SerializeToString()
    assert {(o.domain, o.version) for o in saved.opset_import} == {(o.domain, o.version) for o in proto.opset_import}


def test_metadata_and_doc_strings_preserved(tmp_path):
    proto = build.with_metadata()
    onnxforge.save(onnxforge.load(proto), tmp_path / "m.onnx")
    saved = onnx.load(tmp_path / "m.onnx")
    assert saved.doc_string == "an MLP" and saved.graph.doc_string == "graph doc"
    assert saved.graph.node[0].doc_string == "first matmul"
    assert {p.key: p.value for p in saved.metadata_props} == {"author": "onnxforge", "license": "MIT"}
    assert (saved.producer_name, saved.producer_version) == ("tests", "1.2")


def test_constant_node_weights_round_trip_bitwise():
    from onnxforge.tools.example import build_example

    assert check_file_or_proto("example", build_example()).status == "identical"


def test_external_data_load_and_save_with_threshold(tmp_path):
    proto = build.mlp()
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(proto, src / "m.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    m = onnxforge.load(src / "m.onnx")
    assert all(v._loader is not None for v in m.graph.initializers.values())  # lazy until used
    out = tmp_path / "out"
    out.mkdir()
    onnxforge.save(m, out / "m.onnx", external_data=True, size_threshold=100)
    assert (out / "m.onnx.data").exists()
    saved = onnx.load(out / "m.onnx", load_external_data=False)
    external = {t.name for t in saved.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL}
    assert external == {"w1", "w2"}  # b1 (64 bytes) stays inline under the threshold
    assert check_file_or_proto("ext", str(out / "m.onnx")).status == "identical"
    # saving twice does not append to the old data file
    size = os.path.getsize(out / "m.onnx.data")
    onnxforge.save(onnxforge.load(out / "m.onnx"), out / "m.onnx", external_data=True, size_threshold=100)
    assert os.path.getsize(out / "m.onnx.data") == size


def test_models_over_2gib_go_through_external_data(tmp_path):
    """A model whose weights exceed protobuf's 2 GiB limit saves with external data
    automatically and loads back lazily (data never all in one protobuf)."""
    big = np.ones((2**29 + 2**20,), dtype=np.float32)  # 2.004 GiB
    proto = build.model([onnx.helper.make_node("Add", ["x", "w"], ["y"])],
                        [build.tensor("x", [big.size])], [build.tensor("y", [big.size])],
                        [build.init("w", np.zeros(1, np.float32))])
    m = onnxforge.load(proto)
    m.graph.initializers["w"].set_array(big)
    onnxforge.verify(m)
    onnxforge.save(m, tmp_path / "big.onnx")
    assert os.path.getsize(tmp_path / "big.onnx") < 10_000
    assert os.path.getsize(tmp_path / "big.onnx.data") == big.nbytes
    del big, m
    back = onnxforge.load(tmp_path / "big.onnx")
    weight = back.graph.initializers["w"]
    assert weight.nbytes == (2**29 + 2**20) * 4 and weight._array is None
    assert float(weight.array[-1]) == 1.0
