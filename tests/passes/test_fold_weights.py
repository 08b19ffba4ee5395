"""Weights that a model computes from constants (onnx's light zoo models build
every weight with ConstantOfShape, and list them as graph inputs as IR 3 had to)
fold whatever their size, so that -O2 then folds the BatchNorms into them."""
import os

import onnx

import onnxforge
from tests.conftest import run_and_check

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")


def test_ir3_initializers_listed_as_inputs_load_as_weights():
    proto = onnx.load(os.path.join(LIGHT, "light_squeezenet.onnx"))
    assert proto.ir_version == 3 and len(proto.graph.input) == len(proto.graph.initializer) + 1
    model = onnxforge.load(proto)
    assert [v.name for v in model.graph.inputs] == ["data_0"] and model.ir_version == 4


def test_light_resnet50_weights_fold_and_batchnorms_go():
    proto = onnx.load(os.path.join(LIGHT, "light_resnet50.onnx"))
    result = run_and_check(proto, "-O2", atol=1e-4, rtol=1e-3)
    ops = [n.op_type for n in result.model.graph.nodes]
    assert "ConstantOfShape" not in ops and "BatchNormalization" not in ops
    assert len(ops) <= 123  # what onnxsim 0.8.1 and onnxslim 0.1.98 leave
