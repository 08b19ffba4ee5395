"""Lowering: onnxforge Model -> Relax IRModule.

Standard ops (and the com.microsoft ops it knows) go through
tvm.relax.frontend.onnx; our table (codegen.registry) wins where it has an entry.
Weights stay function parameters in their stored dtype (detached, not folded in as
constants: constant folding would turn int8 weights back into fp32, see
TVM-NOTES.md); small tensors and integer tensors (shapes, axes, indices) become
constants, because many frontend converters need them as constants.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import warnings

import numpy as np
import onnx
import onnx.inliner
import tvm
from tvm import relax
from tvm.relax.frontend.onnx.onnx_frontend import ONNXGraphImporter, _get_convert_map, _tensor_to_shape_expr

from ..ir import Graph, LoweringError, Model, Node, Value, from_proto, to_proto
from ..passes import optimize
from ..passes.constants import constants_to_initializers
from . import control_flow, lowerings, quant  # noqa: F401  (lowerings registers the built-in lowerings)
from .manifest import TensorSpec
from .registry import get_lowering
from .shape_values import reshape_target

# Domains whose ops the TVM frontend may convert (it ignores domains: a custom
# domain's "Relu" must not silently become the standard one).
FRONTEND_DOMAINS = ("", "ai.onnx", "com.microsoft")
# Weights: float tensors and quantized integer tensors at least this large. Smaller
# ones (scalars, Resize scales, Clip bounds) are constants, as converters expect.
MIN_PARAM_ELEMENTS = 16
# ops whose frontend converters take shape values (onnx_frontend's _construct_nodes)
_SHAPE_OPS = {"Reshape", "Resize", "ConstantOfShape", "Gather", "Slice", "Shape", "Expand", "Concat", "Equal", "Where",
              "Cast", "CastLike", "Squeeze"}
_COMPARISONS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"}
# elementwise ops with numpy broadcasting: their output shape follows from the inputs'
_BROADCASTING = {"Add", "Sub", "Mul", "Div", "Pow", "Mod", "Max", "Min", "Sum", "Mean", "Where", "PRelu", "And", "Or",
                 "Xor", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", *_COMPARISONS}
_QUANT_DTYPES = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT4, onnx.TensorProto.UINT4}


@dataclasses.dataclass
class Lowered:
    mod: tvm.IRModule  # "main" takes inputs, then params, in that order
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    params: list[tuple[str, np.ndarray]]  # name, array in its stored dtype
    packed: dict[str, dict] = dataclasses.field(default_factory=dict)  # int4 param -> {"dtype", "shape"} unpacked
    notes: list[str] = dataclasses.field(default_factory=list)  # warned about: e.g. If branches that raise when taken


def _fold_shape_arithmetic(model: Model) -> Model:
    """Constant subgraphs evaluated before import, whatever the pipeline was: the
    frontend does not evaluate all shape arithmetic (PP-OCRv4's Shape -> Slice ->
    Cast -> Concat -> Reshape before a Squeeze fails to import under -O0). Small
    results only, so no weight changes form (DequantizeLinear is never folded)."""
    return optimize(model, "fold-constants{max_bytes=4096}").model


def _inline_functions(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Model-local functions inlined. onnx's inliner leaves a call alone when the
    function imports another version of an opset than the model (a function fused at
    opset 12 in a model a later pass moved to 13); where every op of the body has the
    same definition at both versions, the function is relabelled to the model's
    version, which changes nothing; otherwise onnx's version converter runs."""
    def since(node, version):  # the version that defined the op as seen at `version`, None if unknown
        try:
            return onnx.defs.get_schema(node.op_type, version, node.domain or "").since_version
        except onnx.defs.SchemaError:
            return None

    model_versions = {o.domain or "": o.version for o in proto.opset_import}
    convert = False
    for function in proto.functions:
        for imp in function.opset_import:
            want = model_versions.get(imp.domain or "")
            if want is None or want == imp.version:
                continue
            nodes = [n for n in function.node if (n.domain or "") == (imp.domain or "")]
            if all((old := since(n, imp.version)) is not None and old == since(n, want) for n in nodes):
                imp.version = want
            else:
                convert = True
    if convert:  # the converter reads the types of the values a call passes
        typed = {v.name for v in (*proto.graph.input, *proto.graph.value_info)}
        proto.graph.value_info.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                                      for t in proto.graph.initializer if t.name not in typed)
        with contextlib.suppress(Exception):
            proto = onnx.shape_inference.infer_shapes(proto)
    try:
        inlined = onnx.inliner.inline_local_functions(proto, convert_version=convert)
    except Exception as exc:  # noqa: BLE001 - onnx's converter asserts in C++
        inlined, why = None, str(exc).strip().splitlines()[-1][:200]
    left = {(f.domain, f.name) for f in proto.functions}
    left = left if inlined is None else {(n.domain, n.op_type) for n in inlined.graph.node} & left
    if left:
        raise LoweringError(f"the model-local function {'.'.join(sorted(left)[0])} could not be inlined: its opset "
                            f"versions differ from the model's{f' ({why})' if inlined is None else ''}; export the "
                            "model with one opset version")
    return inlined


def lower(model: Model) -> Lowered:
    """Lower a model (already optimized) to Relax; raises LoweringError naming the
    node and op that failed."""
    if model.functions:  # the frontend does not know model-local functions; their constants fold below
        model = from_proto(_inline_functions(to_proto(model)), model.base_dir)
    model = _fold_shape_arithmetic(model)  # a copy
    constants_to_initializers(model.graph)  # Constant-node weights become parameters too
    graph = model.graph
    proto = to_proto(model)
    proto.graph.ClearField("initializer")  # we read the data from the IR, not from the proto
    weights = [v for v in graph.initializers.values() if not v.is_graph_input and _is_weight(v)]
    importer = _Importer(model, {v.name for v in weights})
    opset = model.opset
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # frontend chatter: renamed inputs, "dynamic shapes may be slow"
        try:
            mod = importer.from_onnx(proto.graph, opset)
        except Exception as exc:
            with contextlib.suppress(Exception):  # close the open block: TVM warns about it on exit otherwise
                importer.bb._end_block()
            if isinstance(exc, LoweringError):
                raise
            raise LoweringError(f"cannot build the Relax function: {_short(exc)}") from exc  # after the nodes
    if importer.has_control_flow:
        if importer.discarded_functions:  # kernels of loop bodies converted again with other types
            mod = relax.transform.DeadCodeElimination()(mod)
        try:  # branches and loop bodies are built by hand: check what the build would trip over later
            relax.analysis.well_formed(mod)
        except Exception as exc:
            raise LoweringError(f"internal: the lowered control flow is not well formed: {_short(exc)}") from exc
        mod = _to_dataflow(mod)  # main has no dataflow block: give fusion its blocks back
    mod, detached = relax.frontend.detach_params(mod)
    params = [(name, tensor.numpy()) for name, tensor in zip(importer._params, detached.get("main", []))]
    inputs = [tensor_spec(v) for v in graph.inputs if not v.is_initializer]
    outputs = [tensor_spec(v) for v in graph.outputs]
    _fill_output_types(outputs, mod["main"])
    packed = {name: {"dtype": "int4" if signed else "uint4", "shape": list(shape), "packing": "2 per byte, low nibble first"}
              for name, (shape, signed) in importer._packed.items()}
    for note in importer.notes:
        warnings.warn(note, stacklevel=2)
    return Lowered(mod, inputs, outputs, params, packed, list(importer.notes))


def _to_dataflow(mod: tvm.IRModule) -> tvm.IRModule:
    """relax.transform.ConvertToDataflow, per function where it keeps every shape:
    it infers the types of the calls it moves again, and for some a converter's
    symbolic shape ((d,) + (n,) annotated (d,)) becomes rank-only, which TVM then
    cannot legalize. Such functions stay without dataflow blocks (no fusion)."""
    converted = relax.transform.ConvertToDataflow()(mod)
    funcs = {}
    for gv, func in converted.functions_items():
        before = mod[gv.name_hint] if gv.name_hint in [g.name_hint for g in mod.get_global_vars()] else None
        if isinstance(func, relax.Function) and before is not None and _rank_only(func) - _rank_only(before):
            func = before
        funcs[gv] = func
    return tvm.IRModule(funcs, attrs=converted.attrs)


def _rank_only(func: relax.Function) -> set[str]:
    """The function's variables that are tensors of known rank but unknown shape."""
    return {v.name for v in relax.analysis.all_vars(func)
            if isinstance(v.ty, relax.TensorType) and v.ty.ndim > 0 and not isinstance(v.ty.shape, relax.ShapeExpr)}


def tensor_spec(value: Value) -> TensorSpec:
    dtype = None if value.np_dtype is None else value.np_dtype.name
    shape = None if value.shape is None else tuple(d if isinstance(d, (int, str)) else None for d in value.shape)
    return TensorSpec(value.name, dtype, shape)


def _is_weight(value: Value) -> bool:
    if value.dtype is None or value.shape is None or not value.is_static_shape():
        return False
    if int(np.prod(value.shape, dtype=np.int64)) < MIN_PARAM_ELEMENTS:
        return False
    if value.dtype in _QUANT_DTYPES:
        return True
    np_dtype = value.np_dtype
    if (np_dtype is not None and np_dtype.kind == "f") or value.dtype == onnx.TensorProto.BFLOAT16:
        return True
    # int32 biases of quantized layers: weights when only DequantizeLinear reads them
    return np_dtype is not None and np_dtype.kind in "iu" and bool(value.uses) and all(
        n.op_type == "DequantizeLinear" and i == 0 for n, i in value.uses)


def _short(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    # TVM errors carry a long C++ traceback before the message: keep the message.
    return lines[-1] if len(lines) > 6 else " ".join(lines)


class _OneNode:
    """The part of a GraphProto that the frontend's _construct_nodes reads."""

    def __init__(self, node: onnx.NodeProto):
        self.node = [node]


class _Importer(ONNXGraphImporter):
    """The TVM frontend importer with our converter table in front of its own, one
    node at a time so that a failure names the node. Nodes inside If/Loop/Scan
    subgraphs go the same way (codegen.control_flow lowers the control flow)."""

    def __init__(self, model: Model, weight_names: set[str]):
        super().__init__(None, "float32", keep_params_in_input=True, sanitize=True)
        self._model = model
        self._weight_names = weight_names
        self._current: Node | None = None
        self._scope: list[str] = []  # " in the then_branch of If node 'x'", outermost first
        self.has_control_flow = any(control_flow.is_control_flow(n) and get_lowering(n.op_type, n.domain) is None
                                    for n in model.graph.all_nodes())
        self.discarded_functions = False
        self.notes: list[str] = []  # what the compiled model does differently from onnxruntime's
        self._packed: dict[str, tuple[tuple[int, ...], bool]] = {}  # int4 weight -> (shape, signed)
        self._unpacked: dict[str, relax.Expr] = {}

    # weights from the IR (no second copy through protobuf); see the module docstring
    def _parse_graph_initializers(self, graph):
        for name, value in self._model.graph.initializers.items():
            array = value.array
            if array is None:
                raise LoweringError(f"initializer {name!r} has no data")
            if array.dtype.name in quant.INT4_DTYPES:
                if name in self._weight_names:  # stored packed, two per byte; unpacked where used
                    self._packed[name] = (tuple(array.shape), array.dtype.name == "int4")
                    array = quant.pack_int4(array)
                else:  # small int4 constants (zero points): int8 / uint8 of the same values
                    array = array.astype(np.int8 if array.dtype.name == "int4" else np.uint8)
            if name in self._weight_names:
                var = self._new_var(name, shape=array.shape, dtype=str(array.dtype))
                self._nodes[name] = var
                self._params[name] = (var, tvm.runtime.tensor(array))
            else:
                self._nodes[name] = relax.const(tvm.runtime.tensor(array))  # numpy int64 would become int32

    def from_onnx(self, graph, opset):
        """The frontend's from_onnx, except that with control flow anywhere (not only
        a top-level If) main is built without a dataflow block: relax.If cannot sit
        in one. lower() turns the plain stretches back into dataflow blocks."""
        if not self.has_control_flow:
            return super().from_onnx(graph, opset)
        self.opset = opset
        self._parse_graph_initializers(graph)
        self._parse_graph_input(graph)
        self._check_for_unsupported_ops(graph)
        attrs = {"num_input": self._num_input}
        params = [v for v in self._inputs.values() if isinstance(v, relax.Var)]
        if self._params:
            param_vars, param_values = map(list, zip(*self._params.values()))
            params += param_vars
            attrs["params"] = param_values
        with self.bb.function("main", params=params):
            self._construct_nodes(graph)
            outputs = [self._nodes[o.name] for o in graph.output]
            self.bb.emit_func_output(outputs[0] if len(outputs) == 1 else relax.Tuple(outputs))
        mod = self.bb.get()
        mod["main"] = mod["main"].with_attrs(attrs)
        return mod

    def _check_for_unsupported_ops(self, graph):
        frontend = _get_convert_map()
        missing: dict[str, tuple[Node, str]] = {}
        for node, where in _walk(self._model.graph):
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                continue
            if get_lowering(node.op_type, node.domain) is not None or control_flow.is_control_flow(node):
                continue
            if node.domain in FRONTEND_DOMAINS and node.op_type in frontend:
                continue
            missing.setdefault(_op(node), (node, where))
        if missing:
            op, (node, where) = next(iter(missing.items()))
            others = f" (also without a lowering: {', '.join(list(missing)[1:])})" if len(missing) > 1 else ""
            raise LoweringError(f"node {_node_name(node)}{where}: no lowering for op {op}{others}; register one with "
                                f"onnxforge.codegen.register_lowering({node.op_type!r}, domain={node.domain!r})")

    def _construct_nodes(self, graph):
        self._convert_graph(self._model.graph, graph)
        for out in graph.output:  # the frontend keeps Shape results as shape values; outputs are tensors
            expr = self._nodes.get(out.name)
            if isinstance(getattr(expr, "ty", None), relax.ShapeType):
                self._nodes[out.name] = self.bb.emit(relax.op.shape_to_tensor(expr))
            elif isinstance(expr, relax.Expr) and tvm.ir.is_prim_expr(expr) and str(expr.ty.dtype) == "int64":
                as_tensor = relax.op.shape_to_tensor(relax.ShapeExpr([expr]))
                self._nodes[out.name] = self.bb.emit(relax.op.reshape(as_tensor, []))

    def _convert_graph(self, graph: Graph, proto: onnx.GraphProto, start: int = 0) -> None:
        """Convert the nodes of `graph` (the IR) / `proto` (its export) from index
        `start` on into the current block; the graph's outputs end up bound by name."""
        nodes = graph.nodes
        if len(nodes) != len(proto.node):
            raise LoweringError(f"internal: {len(proto.node)} exported nodes for {len(nodes)} IR nodes in graph "
                                f"{graph.name!r}")
        for index in range(start, len(nodes)):
            node, node_proto = nodes[index], proto.node[index]
            previous, self._current = self._current, node
            try:
                if control_flow.is_control_flow(node) and get_lowering(node.op_type, node.domain) is None:
                    rest = functools.partial(self._convert_graph, graph, proto, index + 1)
                    if control_flow.lower_node(self, node, node_proto, rest, list(graph.outputs)):
                        return  # the If lowered the rest of the graph inside its branches
                else:
                    with self._shapes_as_tensors(node, node_proto):
                        super()._construct_nodes(_OneNode(node_proto))
                    self._give_shapes(node_proto)
            except LoweringError as exc:
                if _node_name(node) in str(exc):  # named already (nested nodes, control flow)
                    raise
                where = "".join(reversed(self._scope))  # a lowering's own message: say which node
                raise LoweringError(f"node {_node_name(node)} (op {_op(node)}){where}: {exc}") from exc
            except Exception as exc:
                where = "".join(reversed(self._scope))
                raise LoweringError(f"node {_node_name(node)} (op {_op(node)}){where}: {_short(exc)}") from exc
            finally:
                self._current = previous

    def _give_shapes(self, proto: onnx.NodeProto) -> None:
        """Outputs of known rank but unknown shape (a Slice with run-time bounds, as
        loop bodies have) get symbolic dims: TVM cannot legalize ops on them
        otherwise ("R.add(v0, alloc)" at build)."""
        for name in proto.output:
            expr = self._nodes.get(name) if name else None
            ty = getattr(expr, "ty", None)
            if not isinstance(ty, relax.TensorType) or ty.ndim <= 0 or isinstance(ty.shape, relax.ShapeExpr):
                continue
            dims = _broadcast_dims(self._input_shapes(proto), ty.ndim) if proto.op_type in _BROADCASTING else None
            explicit = self._broadcast_explicitly(expr, dims) if dims is not None else None
            if explicit is not None:
                self._nodes[name] = explicit
                continue
            if dims is None:
                dims = [tvm.tirx.Var(f"{_ident(name)}_{k}", "int64") for k in range(ty.ndim)]
            self._nodes[name] = self.bb.match_cast(expr, relax.TensorType(dims, str(ty.dtype.dtype)))

    def _broadcast_explicitly(self, expr, dims: list):
        """The elementwise call `expr` again, its operands broadcast_to `dims` first:
        Relax then knows the output shape, and LegalizeOps can lower the op (it
        cannot with a rank-only output). FuseOps folds the broadcasts into the op."""
        call = expr
        if isinstance(expr, relax.Var):
            with contextlib.suppress(Exception):
                call = self.bb.lookup_binding(expr)
        if not isinstance(call, relax.Call) or not isinstance(call.op, tvm.ir.Op):
            return None
        target = relax.ShapeExpr(dims)
        args = []
        for arg in call.args:
            ty = getattr(arg, "ty", None)
            if not isinstance(ty, relax.TensorType) or (ty.ndim > 0 and not isinstance(ty.shape, relax.ShapeExpr)):
                return None
            args.append(arg if ty.ndim == 0 else relax.op.broadcast_to(arg, target))
        new = self.bb.normalize(relax.Call(call.op, args, call.attrs, call.ty_args))
        if not isinstance(getattr(new.ty, "shape", None), relax.ShapeExpr):
            return None
        return self.bb.emit(new)

    def _input_shapes(self, proto: onnx.NodeProto) -> list | None:
        """The static-or-symbolic shapes of the node's inputs, or None if one is not known."""
        shapes = []
        for name in proto.input:
            ty = getattr(self._nodes.get(name), "ty", None) if name else None
            if isinstance(ty, relax.TensorType) and isinstance(ty.shape, relax.ShapeExpr):
                shapes.append(list(ty.shape.values))
            elif isinstance(ty, relax.TensorType) and ty.ndim == 0:
                shapes.append([])
            else:
                return None
        return shapes

    @contextlib.contextmanager
    def _shapes_as_tensors(self, node: Node, proto: onnx.NodeProto):
        """The frontend keeps Shape results as shape values, which most of its
        converters refuse ("cannot handle ShapeExpr inputs": Size(Shape(x)) in
        torch's rank tests). Those get the shape as an int64 tensor, for this node;
        so do dims (prim values) compared by Equal and the like."""
        if get_lowering(node.op_type, node.domain) is not None:
            yield
            return
        saved = {}
        for name in proto.input:
            expr = self._nodes.get(name) if name else None
            if not isinstance(expr, relax.Expr) or name in saved:
                continue
            if isinstance(expr.ty, relax.ShapeType) and node.op_type not in _SHAPE_OPS:
                saved[name] = expr
                self._nodes[name] = self.bb.emit(relax.op.shape_to_tensor(expr))
            elif node.op_type in _COMPARISONS and tvm.ir.is_prim_expr(expr) and str(expr.ty.dtype) == "int64":
                # a dim taken from a shape (Gather(Shape(x), k)): R.equal(n, 1) does not legalize
                saved[name] = expr
                as_tensor = relax.op.shape_to_tensor(relax.ShapeExpr([expr]))
                self._nodes[name] = self.bb.emit(relax.op.reshape(as_tensor, []))
        try:
            yield
        finally:
            self._nodes.update(saved)

    def convert_subgraph(self, graph: Graph, proto: onnx.GraphProto, bindings: dict[str, relax.Expr],
                         where: str) -> list[relax.Expr]:
        """Convert a subgraph's nodes into the current block, its inputs bound to
        `bindings` (name -> expression), enclosing values visible by name. Returns
        the expressions of its outputs; names defined inside are forgotten after."""
        saved_nodes, saved_unpacked = dict(self._nodes), dict(self._unpacked)
        self._scope.append(where)
        try:
            self._nodes.update(bindings)
            for name, value in graph.initializers.items():
                if name not in bindings:
                    self._nodes[name] = relax.const(tvm.runtime.tensor(value.array))
            self._convert_graph(graph, proto)
            missing = [v.name for v in graph.outputs if v.name not in self._nodes]
            if missing:
                raise LoweringError(f"output {missing[0]!r} of the subgraph{where} is not defined")
            # converters return unbound calls: bind each once (an output used twice is not computed twice)
            bound: list[tuple[relax.Expr, relax.Var]] = []
            outputs = []
            for value in graph.outputs:
                expr = self._nodes[value.name]
                if isinstance(expr, relax.Call) and isinstance(expr.ty, relax.TensorType):
                    var = next((v for call, v in bound if call.same_as(expr)), None)
                    if var is None:
                        var = self.bb.emit(expr)
                        bound.append((expr, var))
                    expr = var
                outputs.append(expr)
            return outputs
        finally:
            _restore(self._nodes, saved_nodes)  # in place: the mapping may be control_flow's recorder
            _restore(self._unpacked, saved_unpacked)
            self._scope.pop()

    def _convert_operator(self, op_name, inputs, attrs, opset):
        node = self._current
        if self._packed:
            inputs = self._unpack_inputs(inputs)
        if node is not None and node.op_type == op_name:
            fn = get_lowering(node.op_type, node.domain)
            if fn is not None:
                out = fn(self.bb, node, list(inputs))
                if isinstance(out, (list, tuple)) and len(out) == 1:  # one output: the tensor, not a 1-tuple
                    out = out[0]
                if isinstance(out, (list, tuple)):
                    out = relax.Tuple([self.bb.normalize(o) for o in out])
                return self.bb.normalize(out)
            if op_name == "Reshape":
                inputs = self._reshape_target_as_shape(node, inputs)
        return super()._convert_operator(op_name, inputs, attrs, opset)

    def _unpack_inputs(self, inputs):
        """Packed int4 weights enter each node unpacked (int8 / uint8 values, one
        unpacking per weight, which fuses into its consumer)."""
        new = []
        for expr in inputs:
            name = None
            if isinstance(expr, relax.Var):
                name = next((n for n in self._packed if self._params[n][0].same_as(expr)), None)
            if name is not None:
                if name not in self._unpacked:
                    shape, signed = self._packed[name]
                    self._unpacked[name] = quant.unpack_int4(self.bb, expr, shape, signed)
                expr = self._unpacked[name]
            new.append(expr)
        return type(inputs)(new) if isinstance(inputs, (list, tuple)) else inputs

    def _reshape_target_as_shape(self, node: Node, inputs):
        """A Reshape target computed at run time (a tensor, not a constant): the
        frontend wants a shape value. Resolve ONNX's 0 (copy the input dim) and -1
        (infer) in the graph, then turn the tensor into a shape value."""
        data, target = inputs[0], inputs[1]
        n = _static_vector_length(target)
        if n is None or isinstance(target, tvm.ir.GenericConst) or not isinstance(data.ty, relax.TensorType):
            return inputs
        shape = reshape_target(self.bb, data, target, bool(node.attributes.get("allowzero", 0)))
        if shape is not None:  # computed from the input's own dims: keep them (shape_values.py)
            return type(inputs)([data, shape, *inputs[2:]])
        op, bb = relax.op, self.bb
        i64 = lambda v: relax.const(v, "int64")  # noqa: E731
        t = bb.normalize(target if str(target.ty.dtype.dtype) == "int64" else op.astype(target, "int64"))
        dims = bb.normalize(op.astype(op.shape_to_tensor(op.shape_of(data)), "int64"))
        rank = data.ty.ndim
        if not node.attributes.get("allowzero", 0) and rank >= 0 and n > 0:
            head = op.strided_slice(dims, axes=[0], begin=[0], end=[min(n, rank)]) if rank else None
            if n > rank:  # zeros past the input's rank are invalid ONNX; ones keep the size check honest
                ones = relax.const(np.ones(n - rank, np.int64), "int64")
                head = ones if head is None else op.concat([head, ones], axis=0)
            t = bb.normalize(op.where(op.equal(t, i64(0)), head, t))
        known = op.prod(op.where(op.equal(t, i64(-1)), i64(1), t))
        t = bb.normalize(op.where(op.equal(t, i64(-1)), op.floor_divide(op.prod(dims), known), t))
        return type(inputs)([data, _tensor_to_shape_expr(bb, t, n, "reshape_dim"), *inputs[2:]])


def _broadcast_dims(shapes: list | None, ndim: int) -> list | None:
    """The output dims of a numpy-broadcasting op from its inputs' dims, where Relax
    gives up (a symbolic dim against a static one, or two different symbolic dims).
    In a valid broadcast every non-1 dim of a column is the same size, so the result
    is the static size if there is one, the symbolic dim if there is only one, else
    their max: expressions over dims already known, so no new symbolic variable is
    introduced (fresh ones, bound mid-block by match_cast, can be read before they
    are bound once FuseOps reorders a dataflow block)."""
    if not shapes or max(len(s) for s in shapes) != ndim:
        return None
    dims, analyzer = [], tvm.sym.Analyzer()
    for k in range(ndim):
        column = [s[len(s) - ndim + k] for s in shapes if len(s) - ndim + k >= 0]
        static = [int(d) for d in column if isinstance(d, tvm.tirx.IntImm)]
        if any(d != 1 for d in static):
            dims.append(tvm.tirx.IntImm("int64", next(d for d in static if d != 1)))
            continue
        symbolic = []
        for d in column:
            if not isinstance(d, tvm.tirx.IntImm) and not any(analyzer.can_prove_equal(d, e) for e in symbolic):
                symbolic.append(d)
        dim = tvm.tirx.IntImm("int64", 1) if not symbolic else functools.reduce(tvm.tirx.max, symbolic)
        dims.append(dim)
    return dims


def _static_vector_length(expr) -> int | None:
    """n for a 1-D integer tensor of static length n, else None."""
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.ndim != 1 or not str(ty.dtype.dtype).startswith(("int", "uint")):
        return None
    if not isinstance(ty.shape, relax.ShapeExpr) or not hasattr(ty.shape.values[0], "value"):
        return None
    return int(ty.shape.values[0].value)


def _ident(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name) or "d"


def _restore(mapping: dict, saved: dict) -> None:
    mapping.clear()
    mapping.update(saved)


def _walk(graph: Graph, where: str = ""):
    """(node, " in the <attr> of <op> node <name>..." or "") for every node,
    subgraphs included (not below a control-flow node that our table lowers whole)."""
    for node in graph.nodes:
        yield node, where
        if get_lowering(node.op_type, node.domain) is not None:
            continue
        for attr, value in node.attributes.items():
            subs = [value] if isinstance(value, Graph) else [v for v in value if isinstance(v, Graph)] \
                if isinstance(value, list) else []
            for sub in subs:
                yield from _walk(sub, f" in the {attr} of {node.op_type} node {_node_name(node)}{where}")


def _op(node: Node) -> str:
    return f"{node.domain}.{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _node_name(node: Node) -> str:
    return repr(node.name) if node.name else f"<unnamed, output {node.outputs[0].name!r}>" if node.outputs else "<unnamed>"


def _fill_output_types(outputs: list[TensorSpec], func: relax.Function) -> None:
    """Outputs the IR has no type for take the dtype (and rank) TVM inferred."""
    ret = func.ret_ty
    fields = list(ret.fields) if isinstance(ret, relax.TupleType) else [ret]
    for spec, ty in zip(outputs, fields):
        if not isinstance(ty, relax.TensorType):
            continue
        if spec.dtype is None:
            spec.dtype = str(ty.dtype.dtype)
        if spec.shape is None and isinstance(ty.shape, relax.ShapeExpr):
            spec.shape = tuple(int(d.value) if hasattr(d, "value") else str(d) for d in ty.shape.values)
