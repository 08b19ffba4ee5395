"""Raising a model's default opset import so that a quantized format becomes legal
(per-channel DequantizeLinear: 13; float16 scales: 19; int4 / blocked: 21), without
changing what any other op computes.

Every op in the model is checked against the versions its schema gained between
the model's opset and the target:

- versions that only added types, or optional attributes/inputs whose default is
  the old behaviour, need nothing;
- versions that moved an attribute to an input (Squeeze/Unsqueeze/ReduceSum/Split
  at 13, the other Reduce* at 18) are adapted: the attribute becomes a constant
  input (Split at 18 also gets num_outputs when it has no split input);
- Softmax/LogSoftmax/Hardmax at 13 (axis no longer flattens to 2-D) are kept when
  their axis is the last one of a known-rank input, else refused;
- Dropout at 12 loses its ratio attribute (inference only: Dropout is identity);
  GridSample at 20 gets its renamed mode values; Resize at 13 is refused only for
  the removed tf_half_pixel_for_nearest mode;
- anything else that changed meaning (RoiAlign 16, DFT 20, GroupNormalization 21,
  every change at opset 11 or before) is refused with the list of blocking ops.
"""
from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import onnx

from ...ir import Model, Node, PassError
from ..analysis import get_analysis
from ..util import is_standard

_REDUCE_18 = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
              "ReduceProd", "ReduceSumSquare")
_REFUSED = {("RoiAlign", 16): "coordinate_transformation_mode default changed",
            ("DFT", 20): "axis and dft_length became inputs",
            ("GroupNormalization", 21): "scale and bias became per channel"}
_IR_FOR_OPSET = ((21, 10), (19, 9), (13, 7), (10, 5))


@functools.lru_cache(maxsize=1)
def _schema_versions() -> dict[str, tuple[int, ...]]:
    versions: dict[str, set[int]] = {}
    for schema in onnx.defs.get_all_schemas_with_history():
        if schema.domain in ("", "ai.onnx"):
            versions.setdefault(schema.name, set()).add(schema.since_version)
    return {name: tuple(sorted(v)) for name, v in versions.items()}


def _axes_to_input(attr: str, position: int) -> Callable[[Node], None]:
    def adapt(node: Node) -> None:
        if attr not in node.attributes:
            return
        values = np.asarray(node.attributes.pop(attr), dtype=np.int64)
        const = node.graph.add_initializer(values, name=f"{node.name or node.op_type}_{attr}")
        while len(node.inputs) < position:
            node.append_input(None)
        if len(node.inputs) == position:
            node.append_input(const)
        else:
            node.set_input(position, const)
    return adapt


def _split_num_outputs(node: Node) -> None:
    if len(node.inputs) < 2 or node.inputs[1] is None:
        node.attributes["num_outputs"] = len(node.outputs)


def _drop_attr(name: str) -> Callable[[Node], None]:
    def adapt(node: Node) -> None:
        node.attributes.pop(name, None)
    return adapt


def _grid_sample_modes(node: Node) -> None:
    mode = node.attributes.get("mode")
    if mode in ("bilinear", b"bilinear"):
        node.attributes["mode"] = "linear"
    elif mode in ("bicubic", b"bicubic"):
        node.attributes["mode"] = "cubic"


def _observed_ranks(model: Model) -> dict[str, int]:
    """The ranks of the Softmax-like inputs in one onnxruntime run (PP-OCRv4's reshapes
    defeat both shape inferences): on the pipeline's first calibration sample, else on
    random inputs; {} when the model does not run. An ONNX tensor's rank does not
    depend on the input values."""
    from ..calibration import current_calibration, has_calibration, iter_activations
    from ..check import sample_inputs

    names = [n.inputs[0].name for n in model.graph.nodes if n.op_type in ("Softmax", "LogSoftmax", "Hardmax")]
    try:
        feeds = next(iter(current_calibration("opset"))) if has_calibration() else sample_inputs(model)
        observed = next(iter_activations(model, [feeds], names, progress=False))
    except Exception:
        return {}
    return {name: array.ndim for name, array in observed.items()}


def _softmax_check(model: Model) -> Callable[[Node], str | None]:
    observed: dict[str, int] = {}

    def rank_of(value) -> int | None:
        if value.shape is None:
            get_analysis(model, "shapes")
        if value.shape is not None:  # onnx's or onnxruntime's symbolic inference
            return len(value.shape)
        if "?" not in observed:  # neither could tell: ranks seen in one run
            observed["?"] = -1
            observed.update(_observed_ranks(model))
        return observed.get(value.name)

    def check(node: Node) -> str | None:
        axis = int(node.attributes.get("axis", 1))
        rank = rank_of(node.inputs[0])
        if rank is None:
            return f"input rank unknown (axis={axis} flattens to 2-D before opset 13)"
        if axis % max(rank, 1) != rank - 1:
            return f"axis={axis} on a rank-{rank} input flattens to 2-D before opset 13"
        return None
    return check


def _resize_check(node: Node) -> str | None:
    mode = node.attributes.get("coordinate_transformation_mode")
    if mode in ("tf_half_pixel_for_nearest", b"tf_half_pixel_for_nearest"):
        return "coordinate_transformation_mode=tf_half_pixel_for_nearest was removed at opset 13"
    return None


def _plan(model: Model, op: str, version: int):
    """(check, adapt) for one schema change: check returns a reason to refuse."""
    if (op, version) in _REFUSED:
        return (lambda node: _REFUSED[(op, version)]), None
    if version <= 11:
        return (lambda node: "changed at or before opset 11 (not classified)"), None
    if (op, version) in (("Squeeze", 13), ("Unsqueeze", 13), ("ReduceSum", 13)) or (op in _REDUCE_18 and version == 18):
        return None, _axes_to_input("axes", 1)
    if (op, version) == ("Split", 13):
        return None, _axes_to_input("split", 1)
    if (op, version) == ("Split", 18):
        return None, _split_num_outputs
    if op in ("Softmax", "LogSoftmax", "Hardmax") and version == 13:
        return _softmax_check(model), (lambda node: node.attributes.__setitem__("axis", -1))
    if (op, version) == ("Dropout", 12):
        return None, _drop_attr("ratio")
    if (op, version) == ("Resize", 13):
        return _resize_check, None
    if (op, version) == ("GridSample", 20):
        return None, _grid_sample_modes
    return None, None


def opset_key(model: Model) -> str:
    return "" if "" in model.opset_imports or "ai.onnx" not in model.opset_imports else "ai.onnx"


def raise_opset(model: Model, target: int, why: str, pass_name: str, hint: str = "") -> str | None:
    """Raise the default opset import to `target`, adapting the ops that need it.
    Returns "old->new", None when the model is already there; raises PassError
    (leaving the model as it was) when an op would change meaning."""
    key = opset_key(model)
    old = model.opset_imports.get(key, 1)
    if old >= target:
        return None
    versions = _schema_versions()
    actions: list[tuple[Node, Callable[[Node], None]]] = []
    blockers: list[str] = []
    for node in model.graph.all_nodes():
        if not is_standard(node):
            continue
        for version in versions.get(node.op_type, ()):
            if not old < version <= target:
                continue
            check, adapt = _plan(model, node.op_type, version)
            reason = check(node) if check else None
            if reason:
                blockers.append(f"{node.op_type} {node.name!r} ({reason})")
                break
            if adapt:
                actions.append((node, adapt))
    functions = set()  # model-local functions import the model's version (onnx's checker): theirs move too
    for index, function in enumerate(model.functions):
        for imp in function.opset_import:
            if (imp.domain or "") not in ("", "ai.onnx") or imp.version >= target:
                continue
            for fnode in function.node:
                changes = [v for v in versions.get(fnode.op_type, ()) if imp.version < v <= target]
                if (fnode.domain or "") in ("", "ai.onnx") and any(any(_plan(model, fnode.op_type, v)) for v in changes):
                    blockers.append(f"{fnode.op_type} in the function {function.domain}.{function.name}")
            functions.add(index)
    if blockers:
        shown = "; ".join(blockers[:5]) + (f"; and {len(blockers) - 5} more" if len(blockers) > 5 else "")
        raise PassError(pass_name, f"{why} needs opset {target}, but the model imports opset {old} and raising it "
                        f"would change what these ops compute: {shown}. Convert the model first "
                        f"(onnx.version_converter.convert_version(model, {target})){hint}")
    for node, adapt in actions:
        adapt(node)
    for index in functions:  # a copy: clones of the model share their FunctionProtos
        function = type(model.functions[index])()
        function.CopyFrom(model.functions[index])
        for imp in function.opset_import:
            if (imp.domain or "") in ("", "ai.onnx") and imp.version < target:
                imp.version = target
        model.functions[index] = function
    model.opset_imports[key] = target
    for opset, ir in _IR_FOR_OPSET:
        if target >= opset:
            model.ir_version = max(model.ir_version, ir)
            break
    model.analyses.clear()
    return f"{old}->{target}"
