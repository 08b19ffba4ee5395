"""Helper for the ONNX-op lowering tests: build a one-graph model with
onnx.helper, run it through onnxruntime and through onnxforge.compile (x86,
-O0), compare every output."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper


def check_against_onnxruntime(tmp_path, nodes, feeds: dict, outputs: list[str], opset: int = 21, *,
                              rtol: float = 1e-5, atol: float = 1e-6, domains: dict | None = None,
                              initializers: list | None = None, ir_version: int = 10):
    """Compile the graph of `nodes` (inputs typed from `feeds`) and check it
    matches onnxruntime; returns the compiled outputs by name."""
    import onnxruntime as ort

    import onnxforge

    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype),
                                            list(np.shape(a))) for name, a in feeds.items()]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_value_info(n, onnx.TypeProto()) for n in outputs],
                              initializer=initializers or [])
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = ir_version
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = sess.run(outputs, feeds)
    # a dim declared 0 is an open dim to onnxforge's loader (as Paddle writes them): pinned
    pinned = {name: np.shape(a) for name, a in feeds.items() if 0 in np.shape(a)}
    pkg = onnxforge.compile(onnxforge.ir.from_proto(model), target="x86", pipeline="-O0", output=tmp_path / "m.ofpkg",
                            input_shapes=pinned or None)
    got = pkg(feeds)
    for name, want in zip(outputs, expected):
        assert got[name].shape == want.shape, f"{name}: shape {got[name].shape}, expected {want.shape}"
        assert got[name].dtype == want.dtype, f"{name}: dtype {got[name].dtype}, expected {want.dtype}"
        np.testing.assert_allclose(got[name], want, rtol=rtol, atol=atol, err_msg=name)
    return got
