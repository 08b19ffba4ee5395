"""ONNX <-> IR. Import keeps the imported protos so that an untouched tensor or
attribute is re-emitted bit for bit; export rebuilds only what passes changed."""
from __future__ import annotations

import os
import re
import tempfile
from collections import ChainMap
from typing import Any, Mapping

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import helper, numpy_helper

from .errors import ModelLoadError, OnnxforgeError, VerifierError
from .external_data import check_tensor_size, external_loader, uses_external_data
from .graph import Graph, topological_order
from .model import Model
from .gc_pause import gc_paused
from .node import Node
from .value import Value

A = onnx.AttributeProto
_TWO_GIB = 2**31 - 2**20  # protobuf's limit, less room for the graph itself


# ---------------------------------------------------------------- loading
def load(source: str | os.PathLike | bytes | onnx.ModelProto) -> Model:
    """Load a model from a path, serialized bytes, or a ModelProto."""
    base_dir = None
    if isinstance(source, onnx.ModelProto):
        proto = source
    elif isinstance(source, (bytes, bytearray)):
        proto = _parse(bytes(source), "<bytes>")
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise ModelLoadError(f"{path}: no such file")
        with open(path, "rb") as f:
            data = f.read()
        proto = _parse(data, path)
        base_dir = os.path.dirname(os.path.abspath(path))
    where = "model" if base_dir is None else os.fspath(source)
    try:
        with gc_paused():  # see gc_pause.py
            return from_proto(proto, base_dir)
    except OnnxforgeError:
        raise
    except Exception as exc:  # a corrupt proto can break onnx's helpers in many ways
        raise ModelLoadError(f"{where}: cannot import model: {type(exc).__name__}: {exc}") from exc


def _parse(data: bytes, where: str) -> onnx.ModelProto:
    if not data:
        raise ModelLoadError(f"{where}: file is empty")
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{where}: not a valid ONNX protobuf (truncated or corrupt): {exc}") from None
    if not proto.HasField("graph"):
        raise ModelLoadError(f"{where}: the protobuf has no graph; is this an ONNX model?")
    return proto


def from_proto(proto: onnx.ModelProto, base_dir: str | None = None) -> Model:
    if proto.ir_version < 1:
        raise ModelLoadError(f"the model's ir_version is {proto.ir_version} (not set), which no runtime loads; set it "
                             "(onnx.helper.make_model sets the current one) and save the model again")
    importer = _Importer(base_dir, weights_listed_as_inputs=0 < proto.ir_version < 4)
    graph = importer.graph(proto.graph, {}, "main graph", _DimNamer(proto.graph))
    opsets: dict[str, int] = {}
    for entry in proto.opset_import:
        opsets[entry.domain] = entry.version
    model = Model(graph, opsets)
    # IR < 4 had to list every initializer as a graph input; they are weights (as
    # onnxruntime reads them) and load as initializers only, which needs IR 4.
    model.ir_version = 4 if importer.unlisted else proto.ir_version
    model.producer_name = proto.producer_name
    model.producer_version = proto.producer_version
    model.domain = proto.domain
    model.model_version = proto.model_version
    model.doc_string = proto.doc_string
    model.metadata_props = {p.key: p.value for p in proto.metadata_props}
    model.functions = list(proto.functions)
    model.training_info = list(proto.training_info)
    model.base_dir = base_dir
    return model


def _read_type(value: Value, type_proto: onnx.TypeProto, namer: "_DimNamer | None" = None) -> None:
    """Copy a declared type onto `value`. With `namer` (graph inputs), a dim the
    model leaves open (-1 and 0 as Paddle and others write them, an empty or "?"
    dim_param, no field at all) becomes a fresh symbolic dim named after the input
    (x_dim0, ...) that can be pinned and is bound per run; elsewhere such a dim is
    unknown (None)."""
    if type_proto.HasField("tensor_type"):
        tensor = type_proto.tensor_type
        if tensor.elem_type:
            value.dtype = tensor.elem_type
        if tensor.HasField("shape"):
            value.shape = tuple(_read_dim(d, namer, f"{value.name}_dim{i}") for i, d in enumerate(tensor.shape.dim))
    elif type_proto.WhichOneof("value") is not None:
        value.type_proto = type_proto  # sequence / map / optional / sparse: kept whole


def _read_dim(dim: onnx.TensorShapeProto.Dimension, namer: "_DimNamer | None", name: str) -> int | str | None:
    if dim.HasField("dim_value"):
        size = dim.dim_value
        if size > 0 or (size == 0 and namer is None):
            return size
    elif dim.HasField("dim_param") and dim.dim_param not in OPEN_DIM_PARAMS:
        return dim.dim_param
    return namer.fresh(name) if namer is not None else None


# dim_params that name no dim: each such dim is its own unknown (Paddle writes "?"
# for every open dim of an input, which would otherwise force them all equal)
OPEN_DIM_PARAMS = ("", "?")


class _DimNamer:
    """Fresh symbolic dim names, unique among the dim_params the model already uses.
    Not onnx's unk__N: those mark dims nobody can name (ir.shapes.is_unknown_dim),
    and an input's open dim is a name the shape analysis carries. Names are
    identifiers, as sympy parses them inside the symbolic tool's expressions."""

    def __init__(self, graph: onnx.GraphProto):
        self.used = set(_dim_params(graph))

    def fresh(self, wanted: str) -> str:
        base = re.sub(r"\W", "_", wanted)
        base = base if base[:1].isalpha() else f"in_{base}"
        name, count = base, 1
        while name in self.used:
            name, count = f"{base}_{count}", count + 1
        self.used.add(name)
        return name


def _dim_params(graph: onnx.GraphProto):
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.type.HasField("tensor_type"):
            yield from (d.dim_param for d in vi.type.tensor_type.shape.dim if d.HasField("dim_param"))
    for node in graph.node:
        for attr in node.attribute:
            for sub in (*([attr.g] if attr.type == A.GRAPH else []), *attr.graphs):
                yield from _dim_params(sub)


class _Importer:
    def __init__(self, base_dir: str | None, weights_listed_as_inputs: bool = False):
        self.base_dir = base_dir
        self.weights_listed_as_inputs = weights_listed_as_inputs
        self.unlisted = 0  # initializers taken out of the inputs (IR < 4)

    def tensor_value(self, tensor: onnx.TensorProto, where: str) -> Value:
        check_tensor_size(tensor, where)
        value = Value(tensor.name, tensor.data_type, tuple(tensor.dims))
        value.doc_string = tensor.doc_string
        if uses_external_data(tensor):
            value._loader = external_loader(tensor, self.base_dir, where)
        value._tensor = tensor
        return value

    def graph(self, proto: onnx.GraphProto, outer: Mapping[str, Value], where: str,
              namer: _DimNamer | None = None) -> Graph:
        graph = Graph(proto.name)
        graph.doc_string = proto.doc_string
        graph.metadata_props = {p.key: p.value for p in getattr(proto, "metadata_props", [])}
        if len(proto.sparse_initializer):
            raise ModelLoadError(f"{where}: sparse initializers are not supported (tensor {proto.sparse_initializer[0].values.name!r})")
        local: dict[str, Value] = {}
        scope = ChainMap(local, outer)

        def define(value: Value, what: str) -> None:
            if value.name in local:
                raise ModelLoadError(f"{where}: name {value.name!r} is defined twice ({what}); ONNX graphs are SSA")
            local[value.name] = value
            value.graph = graph

        for vi in proto.input:
            value = Value(vi.name)
            _read_type(value, vi.type, namer)
            value.doc_string = vi.doc_string
            define(value, "graph input")
            graph.inputs.append(value)
        for tensor in proto.initializer:
            init = self.tensor_value(tensor, where)
            if tensor.name in local and local[tensor.name].is_graph_input and self.weights_listed_as_inputs \
                    and not outer:
                graph.inputs.remove(local.pop(tensor.name))
                self.unlisted += 1
            if tensor.name in local and local[tensor.name].is_graph_input:
                # An input with a default value: one Value, both roles.
                existing = local[tensor.name]
                existing._tensor, existing._loader = init._tensor, init._loader
                if existing.shape is None:
                    existing.shape = init.shape
                graph.initializers[tensor.name] = existing
                continue
            define(init, "initializer")
            graph.initializers[tensor.name] = init

        nodes: list[Node] = []
        for i, np_ in enumerate(proto.node):
            outputs = []
            for name in np_.output:
                value = Value(name)
                if name:
                    define(value, f"output of node {np_.name or i}")
                outputs.append(value)
            node = Node(np_.op_type, (), outputs, domain=np_.domain, name=np_.name)
            node.doc_string = np_.doc_string
            node.overload = getattr(np_, "overload", "")
            node.metadata_props = {p.key: p.value for p in getattr(np_, "metadata_props", [])}
            nodes.append(node)
        for np_, node in zip(proto.node, nodes):
            for name in np_.input:
                if not name:
                    node.append_input(None)
                    continue
                value = scope.get(name)
                if value is None:
                    raise ModelLoadError(
                        f"{where}: node {np_.name or '<unnamed>'!r} ({np_.op_type}) reads {name!r}, "
                        "which no node, initializer or graph input defines"
                    )
                node.append_input(value)
            for attr in np_.attribute:
                decoded = self.attribute(attr, scope, f"{where} / node {np_.name or np_.op_type}")
                node.attributes[attr.name] = decoded
                node._attr_protos[attr.name] = (decoded, attr)
        for node in nodes:
            graph.insert_node(node)
        # ONNX requires order, but files in the wild are not always sorted (subgraphs
        # were sorted as they were imported)
        graph.nodes = topological_order(graph.nodes)

        for vi in proto.value_info:
            value = local.get(vi.name)
            if value is not None:
                _read_type(value, vi.type)
                graph.value_info_order.append(vi.name)
        for vi in proto.output:
            value = scope.get(vi.name)
            if value is None:
                raise ModelLoadError(f"{where}: graph output {vi.name!r} is not produced by any node or input")
            _read_type(value, vi.type)
            graph.outputs.append(value)
        return graph

    def attribute(self, attr: onnx.AttributeProto, scope: Mapping[str, Value], where: str) -> Any:
        if attr.ref_attr_name:
            return attr  # only inside functions, which are carried as protos
        kind = attr.type
        if kind == A.GRAPH:
            return self.graph(attr.g, scope, f"{where} / {attr.name}")
        if kind == A.GRAPHS:
            return [self.graph(g, scope, f"{where} / {attr.name}") for g in attr.graphs]
        if kind == A.TENSOR:
            return self.tensor_array(attr.t, where)
        if kind == A.TENSORS:
            return [self.tensor_array(t, where) for t in attr.tensors]
        if kind in (A.SPARSE_TENSOR, A.SPARSE_TENSORS, A.TYPE_PROTO, A.TYPE_PROTOS):
            return helper.get_attribute_value(attr)
        if kind == A.STRING:
            return _decode(attr.s)
        if kind == A.STRINGS:
            return [_decode(s) for s in attr.strings]
        if kind == A.INT:
            return attr.i
        if kind == A.FLOAT:
            return attr.f
        if kind == A.INTS:
            return list(attr.ints)
        if kind == A.FLOATS:
            return list(attr.floats)
        raise ModelLoadError(f"{where}: attribute {attr.name!r} has unknown type {kind}")

    def tensor_array(self, tensor: onnx.TensorProto, where: str) -> np.ndarray:
        check_tensor_size(tensor, where)
        if uses_external_data(tensor):
            return external_loader(tensor, self.base_dir, where)()
        return numpy_helper.to_array(tensor)


def _decode(data: bytes) -> str | bytes:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data


# ---------------------------------------------------------------- export
def to_proto(model: Model, writer: "_ExternalWriter | None" = None) -> onnx.ModelProto:
    """The model as a ModelProto: all tensor data in memory, or the large tensors
    written through `writer` to an external data file."""
    proto = onnx.ModelProto(**_fields(
        ir_version=model.ir_version, producer_name=model.producer_name, producer_version=model.producer_version,
        domain=model.domain, model_version=model.model_version, doc_string=model.doc_string,
    ))
    for key, val in model.metadata_props.items():
        proto.metadata_props.add(key=key, value=val)
    for domain, version in model.opset_imports.items():
        proto.opset_import.add(**_fields(domain=domain, version=version))
    proto.functions.extend(model.functions)
    proto.training_info.extend(model.training_info)
    _export_graph(model.graph, writer, proto.graph)
    return proto


def to_proto_without_weights(model: Model, min_bytes: int = 1024) -> onnx.ModelProto:
    """The model with main-graph initializers of >= min_bytes turned into typed graph
    inputs: enough for shape inference, without copying the weights."""
    graph = model.graph
    big = [v for v in graph.initializers.values() if v.nbytes >= min_bytes and not v.is_graph_input]
    saved = dict(graph.initializers)
    try:
        for value in big:
            del graph.initializers[value.name]
        proto = to_proto(model)
    finally:
        graph.initializers.clear()
        graph.initializers.update(saved)
    proto.graph.input.extend(_value_info(v) for v in big)
    if proto.ir_version < 4:
        proto.ir_version = 4  # inputs without initializers need IR 4 or later
    return proto


def _fields(**fields: Any) -> dict[str, Any]:
    """Only non-empty fields: proto2 would record an explicit "" as present."""
    return {k: v for k, v in fields.items() if v}


def _value_info(value: Value) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto(**_fields(name=value.name, doc_string=value.doc_string))
    if value.type_proto is not None:
        vi.type.CopyFrom(value.type_proto)
        return vi
    if value.dtype is None and value.shape is None:
        return vi  # the type was never declared; do not invent one
    tensor = vi.type.tensor_type
    tensor.elem_type = value.dtype or 0
    if value.shape is not None:
        tensor.shape.SetInParent()
        for d in value.shape:
            dim = tensor.shape.dim.add()
            if isinstance(d, (int, np.integer)):
                dim.dim_value = int(d)
            elif isinstance(d, str):
                dim.dim_param = d
    return vi


def _tensor_proto(value: Value, writer: "_ExternalWriter | None" = None) -> onnx.TensorProto:
    if writer is not None and value.nbytes >= writer.threshold:
        external = writer.write(value)
        if external is not None:
            return external
    tensor = value._tensor
    if tensor is not None and not uses_external_data(tensor):
        if tensor.name == value.name:
            return tensor
        copy = onnx.TensorProto()
        copy.CopyFrom(tensor)
        copy.name = value.name
        return copy
    array = value.array
    out = numpy_helper.from_array(np.asarray(array), value.name)
    out.doc_string = value.doc_string
    return out


def _export_graph(graph: Graph, writer: "_ExternalWriter | None" = None,
                  proto: onnx.GraphProto | None = None) -> onnx.GraphProto:
    """The graph as a GraphProto, written into `proto` where given. Nodes and
    subgraphs are built in place inside their parents: appending a finished message
    copies it, once per nesting level (most of the export time of If-heavy models)."""
    proto = onnx.GraphProto() if proto is None else proto
    if graph.name:
        proto.name = graph.name
    if graph.doc_string:
        proto.doc_string = graph.doc_string
    for key, val in graph.metadata_props.items():
        proto.metadata_props.add(key=key, value=val)
    proto.input.extend(_value_info(v) for v in graph.inputs)
    proto.initializer.extend(_tensor_proto(v, writer) for v in graph.initializers.values())
    for node in graph.nodes:
        _export_node(node, writer, proto.node.add())
    proto.output.extend(_value_info(v) for v in graph.outputs)
    # value_info: imported entries first in their order, then anything else now known.
    interface = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
    interface |= {id(v) for v in graph.initializers.values()}
    by_name = {v.name: v for node in graph.nodes for v in node.outputs if v.name and id(v) not in interface}
    emitted = set()
    for name in graph.value_info_order:
        value = by_name.get(name)
        if value is not None and (value.dtype is not None or value.type_proto is not None):
            proto.value_info.append(_value_info(value))
            emitted.add(name)
    for name, value in by_name.items():
        if name not in emitted and (value.dtype is not None or value.type_proto is not None):
            proto.value_info.append(_value_info(value))
    return proto


def _export_node(node: Node, writer: "_ExternalWriter | None" = None,
                 proto: onnx.NodeProto | None = None) -> onnx.NodeProto:
    proto = onnx.NodeProto() if proto is None else proto
    for field in ("op_type", "domain", "name", "doc_string", "overload"):
        text = getattr(node, field)
        if text:
            setattr(proto, field, text)
    for key, val in node.metadata_props.items():
        proto.metadata_props.add(key=key, value=val)
    proto.input.extend("" if v is None else v.name for v in node.inputs)
    proto.output.extend(v.name for v in node.outputs)
    for name, value in node.attributes.items():
        if isinstance(value, Graph):
            attr = proto.attribute.add(name=name, type=A.GRAPH)
            _export_graph(value, writer, attr.g)
        elif isinstance(value, list) and value and all(isinstance(v, Graph) for v in value):
            attr = proto.attribute.add(name=name, type=A.GRAPHS)
            for sub in value:
                _export_graph(sub, writer, attr.graphs.add())
        else:
            proto.attribute.append(_export_attribute(node, name, value))
    return proto


def _export_attribute(node: Node, name: str, value: Any) -> onnx.AttributeProto:
    """A non-graph attribute as an AttributeProto."""
    original = node._attr_protos.get(name)
    if isinstance(value, onnx.AttributeProto):
        return value
    if original is not None and original[0] is value:
        return original[1]
    attr_type = original[1].type if original is not None else None
    if isinstance(value, np.ndarray):
        value = numpy_helper.from_array(value)
    elif isinstance(value, list) and value and all(isinstance(v, np.ndarray) for v in value):
        value = [numpy_helper.from_array(v) for v in value]
    if isinstance(value, (np.integer,)):
        value = int(value)
    elif isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, list) and not value and attr_type is None:
        attr_type = A.INTS
    return helper.make_attribute(name, value, attr_type=attr_type)


# ---------------------------------------------------------------- saving
class _ExternalWriter:
    """Writes large tensors straight to one data file (never through a protobuf,
    which cannot hold more than 2 GiB)."""

    def __init__(self, path: str, location: str, threshold: int):
        self.file = open(path, "wb")
        self.location = location
        self.threshold = threshold

    def write(self, value: Value) -> onnx.TensorProto | None:
        array = np.asarray(value.array)
        if array.dtype.kind not in "biufc" or value.dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            return None  # strings and packed types stay inline
        offset = self.file.tell()
        pad = -offset % 4096  # page-aligned, so readers can mmap
        self.file.write(b"\0" * pad)
        offset += pad
        data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        self.file.write(memoryview(data.reshape(-1)).cast("B"))
        tensor = onnx.TensorProto(name=value.name, data_type=value.dtype, dims=list(array.shape))
        if value.doc_string:
            tensor.doc_string = value.doc_string
        tensor.data_location = onnx.TensorProto.EXTERNAL
        for key, val in (("location", self.location), ("offset", str(offset)), ("length", str(data.nbytes))):
            tensor.external_data.add(key=key, value=val)
        return tensor

    def close(self) -> None:
        self.file.close()


def check_model_file(path: str) -> str | None:
    """Why the ONNX file at `path` is not valid (one line), or None: onnx's checker with
    its full check (types and shapes, strict; external data included). One rule of the
    checker is not enforced: a shape on every graph input and output. Exporters write
    outputs of unknown rank without one and every runtime loads them; for those files
    the rest is checked through strict shape inference."""
    try:
        onnx.checker.check_model(path, full_check=True)
        return None
    except Exception as exc:  # noqa: BLE001 - checker and shape inference raise several types
        reason = " ".join(str(exc).split())
    if "Field 'shape' of 'type' is required but missing" in reason:
        try:
            proto = onnx.load_model(path, load_external_data=False)
            onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True)
            return None
        except Exception as exc:  # noqa: BLE001
            reason = " ".join(str(exc).split())
    return reason[:300]


def _check_written(tmp_model: str, path: str) -> None:
    """Only valid models leave save()."""
    reason = check_model_file(tmp_model)
    if reason is not None:
        raise VerifierError(f"not saving {path}: the model is not valid ONNX ({reason}); fix the model or the "
                            "pass that produced it")


def save(model: Model, path: str | os.PathLike, *, external_data: bool | None = None,
         size_threshold: int = 1024, location: str | None = None) -> None:
    """Write the model. external_data=None writes one file unless the model would
    exceed protobuf's 2 GiB limit; tensors >= size_threshold bytes go to `location`
    (default <file name>.data) next to the model. Written to a temporary folder
    first, so a failure leaves no partial output."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise OnnxforgeError(f"cannot save to {path}: folder {folder} does not exist")
    total = sum(v.nbytes for g in model.graph.all_graphs() for v in g.initializers.values())
    if external_data is None:
        external_data = total > _TWO_GIB
    location = location or os.path.basename(path) + ".data"
    if os.path.dirname(location) or location in ("", ".", ".."):
        raise OnnxforgeError(f"external data location {location!r} must be a plain file name in the model's folder")
    with tempfile.TemporaryDirectory(dir=folder, prefix=".onnxforge-save-") as tmp:
        tmp_model = os.path.join(tmp, os.path.basename(path))
        tmp_data = os.path.join(tmp, location)
        writer = _ExternalWriter(tmp_data, location, size_threshold) if external_data else None
        try:
            proto = to_proto(model, writer)
        finally:
            if writer is not None:
                writer.close()
        with open(tmp_model, "wb") as f:
            f.write(proto.SerializeToString())
        _check_written(tmp_model, path)
        if writer is not None:
            os.replace(tmp_data, os.path.join(folder, location))
        os.replace(tmp_model, path)
