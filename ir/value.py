"""Values: the edges of the graph (graph inputs, constants, node outputs)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Union

import numpy as np
import onnx
from onnx import helper

if TYPE_CHECKING:
    from .graph import Graph
    from .node import Node

Dim = Union[int, str, None]  # int: static, str: symbolic, None: unknown


class Value:
    """An SSA value. `producer` is the node that makes it (None for graph inputs and
    initializers); `uses` lists (node, input index) pairs and is kept consistent by
    Node/Graph mutation methods only: never edit it by hand."""

    __slots__ = (
        "name", "dtype", "shape", "type_proto", "producer", "output_index", "uses",
        "graph", "doc_string", "_array", "_tensor", "_loader",
    )

    def __init__(self, name: str, dtype: int | None = None, shape: tuple[Dim, ...] | None = None):
        self.name = name
        self.dtype = dtype  # onnx.TensorProto data type; None when unknown
        self.shape = tuple(shape) if shape is not None else None  # None: rank unknown
        self.type_proto: onnx.TypeProto | None = None  # kept only for non-tensor types
        self.producer: Node | None = None
        self.output_index = 0
        self.uses: list[tuple[Node, int]] = []
        self.graph: Graph | None = None
        self.doc_string = ""
        self._array: np.ndarray | None = None
        # The imported TensorProto, re-emitted as is while the data is untouched
        # (keeps the round trip bitwise lossless and cheap).
        self._tensor: onnx.TensorProto | None = None
        self._loader: Callable[[], np.ndarray] | None = None

    def __repr__(self) -> str:
        return f"Value({self.name!r}, {self.type_str()})"

    # -- type ---------------------------------------------------------------
    @property
    def np_dtype(self) -> np.dtype | None:
        return None if self.dtype is None else helper.tensor_dtype_to_np_dtype(self.dtype)

    def type_str(self) -> str:
        if self.type_proto is not None:
            return helper.printable_type(self.type_proto) if hasattr(helper, "printable_type") else "?"
        dt = "?" if self.dtype is None else helper.tensor_dtype_to_string(self.dtype).replace("TensorProto.", "").lower()
        if self.shape is None:
            return f"{dt}[...]"
        return f"{dt}[{','.join('?' if d is None else str(d) for d in self.shape)}]"

    def is_static_shape(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    # -- constants ----------------------------------------------------------
    @property
    def is_initializer(self) -> bool:
        return self.graph is not None and self.graph.initializers.get(self.name) is self

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and any(v is self for v in self.graph.inputs)

    @property
    def is_graph_output(self) -> bool:
        return self.graph is not None and any(v is self for v in self.graph.outputs)

    def has_data(self) -> bool:
        return self._array is not None or self._tensor is not None or self._loader is not None

    @property
    def array(self) -> np.ndarray | None:
        """The constant data of an initializer (loaded on first access), else None."""
        if self._array is None:
            if self._loader is not None:
                self._array = self._loader()
            elif self._tensor is not None:
                self._array = onnx.numpy_helper.to_array(self._tensor)
        return self._array

    def set_array(self, array: np.ndarray) -> None:
        """Replace the data; the imported proto is dropped so export rebuilds it."""
        array = np.asarray(array)
        self._array = array
        self._tensor = None
        self._loader = None
        self.dtype = helper.np_dtype_to_tensor_dtype(array.dtype)
        self.shape = tuple(int(d) for d in array.shape)

    @property
    def nbytes(self) -> int:
        """Size of the constant data in bytes, without loading external data."""
        packed = self.dtype in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4)  # two per byte, as stored
        if self._array is not None:
            return (int(self._array.size) + 1) // 2 if packed else int(self._array.nbytes)
        if self.shape is None or self.dtype is None or not self.is_static_shape():
            return 0
        count = int(np.prod(self.shape, dtype=np.int64))
        try:
            itemsize = helper.tensor_dtype_to_np_dtype(self.dtype).itemsize
        except (KeyError, ValueError, TypeError):
            itemsize = 1
        return (count + 1) // 2 if packed else count * itemsize

    def const_value(self) -> np.ndarray | None:
        """Data if this value is constant: an initializer or a Constant node's output.
        A graph input with a default initializer is not constant (it can be fed)."""
        if self.producer is None:
            if self.is_initializer and not self.is_graph_input:
                return self.array
            return None
        node = self.producer
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            return constant_node_value(node)
        return None

    def users(self) -> list[Node]:
        """Distinct nodes that read this value, in use order."""
        seen: list[Node] = []
        for node, _ in self.uses:
            if not any(n is node for n in seen):
                seen.append(node)
        return seen


def constant_node_value(node: Node) -> np.ndarray | None:
    """The array a Constant node produces (None for sparse values we do not densify)."""
    attrs = node.attributes
    if "value" in attrs:
        return np.asarray(attrs["value"])
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    if "value_string" in attrs:
        return np.array(attrs["value_string"], dtype=object)
    if "value_strings" in attrs:
        return np.array(attrs["value_strings"], dtype=object)
    return None
