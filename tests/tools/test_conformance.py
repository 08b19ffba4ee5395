"""A fixed sample of onnx's node test cases through onnxruntime and
onnxforge.compile (-O0), in a worker subprocess as the full run does."""
import pytest

from onnxforge.tools import conformance

pytest.importorskip("tvm")

SAMPLE = [
    "test_add", "test_add_bcast", "test_relu", "test_sigmoid", "test_matmul_2d", "test_matmul_4d",
    "test_conv_with_strides_padding", "test_gemm_default_matrix_bias", "test_softmax_axis_1",
    "test_maxpool_2d_default", "test_resize_upsample_scales_nearest", "test_concat_2d_axis_0",
]


def test_fixed_sample_passes_compiled():
    cases = conformance.collect_cases()
    assert set(SAMPLE) <= set(cases)
    results = conformance.run_cases(SAMPLE, cases, jobs=1, timeout=300)
    summary = conformance.summarize(results)
    failed = {r["case"]: (r["status"], r["detail"]) for r in results if r["status"] != "pass"}
    assert not failed, failed
    assert summary["ort_pass"] == summary["compiled_pass"] == len(SAMPLE)
    assert summary["percent"] == 100.0


def test_comparison_follows_the_onnx_runner():
    import numpy as np

    ref = [np.array([1.0, 2.0], np.float32)]
    assert conformance._compare(ref, [np.array([1.0005, 2.0], np.float32)], 1e-3, 1e-7) is None
    assert "max abs diff" in conformance._compare(ref, [np.array([1.1, 2.0], np.float32)], 1e-3, 1e-7)
    assert "dtype" in conformance._compare(ref, [np.array([1.0, 2.0], np.float64)], 1e-3, 1e-7)
    assert "shape" in conformance._compare(ref, [np.array([1.0], np.float32)], 1e-3, 1e-7)
    assert conformance._compare([[np.ones(2)]], [[np.ones(2)]], 1e-3, 1e-7) is None  # sequences element-wise


def test_select_cases_by_op_and_sample():
    cases = conformance.collect_cases()
    names = conformance.select_cases(sorted(cases), cases, ["Relu"], None, None, 0)
    assert names and all("Relu" in conformance.case_ops(cases[n]) for n in names)
    a = conformance.select_cases(sorted(cases), cases, None, None, 5, 7)
    assert a == conformance.select_cases(sorted(cases), cases, None, None, 5, 7) and len(a) == 5
