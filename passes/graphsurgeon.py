"""onnx-graphsurgeon interop: convert between the IR and gs graphs, and run an
existing graphsurgeon function as a pass.

    import onnx_graphsurgeon as gs

    @graphsurgeon_pass("strip-identity")
    def strip_identity(graph: gs.Graph) -> None:
        for node in [n for n in graph.nodes if n.op == "Identity"]:
            ...
        graph.cleanup().toposort()

The function edits the graph in place (or returns a new gs.Graph). The pass
reports a change when the exported graph differs from the one it handed over."""
from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..ir import Model, PassError, from_proto, to_proto
from .analysis import param_stats
from .base import Effect, Pass, PassResult
from .registry import register_pass

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

_PROTO_LIMIT = 2**31 - 2**24


def to_graphsurgeon(model: Model) -> "gs.Graph":
    """A gs.Graph of the model (weights are copied through an ONNX proto)."""
    import onnx_graphsurgeon as gs

    if param_stats(model)["bytes"] >= _PROTO_LIMIT:
        raise PassError("graphsurgeon", "the model's weights exceed 2 GiB, which onnx-graphsurgeon cannot import in memory")
    return gs.import_onnx(to_proto(model))


def from_graphsurgeon(graph: "gs.Graph", like: Model | None = None) -> Model:
    """A Model from a gs.Graph; model-level fields (ir version, producer, metadata)
    come from `like` when given."""
    import onnx_graphsurgeon as gs

    try:
        proto = gs.export_onnx(graph)
    except Exception as exc:
        raise PassError("graphsurgeon", f"onnx-graphsurgeon cannot export the graph: {exc}") from None
    model = from_proto(proto)
    model.graph.sort()  # gs keeps the order the function left; our passes expect topological order
    if like is not None:
        for attr in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string",
                     "base_dir"):
            setattr(model, attr, getattr(like, attr))
        model.metadata_props = dict(like.metadata_props)
        model.functions = list(like.functions) if not model.functions else model.functions
    return model


def _fingerprint(graph: "gs.Graph") -> str:
    import onnx_graphsurgeon as gs

    proto = gs.export_onnx(graph.copy())
    return hashlib.sha1(proto.graph.SerializeToString(deterministic=True)).hexdigest()


class GraphSurgeonPass(Pass):
    """Runs `function(graph: gs.Graph)` on the model. Subclass and set `function`,
    or use graphsurgeon_pass()."""

    function: ClassVar[Callable[..., Any] | None] = None

    def run(self, model: Model) -> PassResult:
        fn = type(self).function
        if fn is None:
            raise PassError(self.name or type(self).__name__, "a GraphSurgeonPass needs a `function`")
        graph = to_graphsurgeon(model)
        before = _fingerprint(graph)
        returned = fn(graph)
        graph = returned if returned is not None and hasattr(returned, "nodes") else graph
        if _fingerprint(graph) == before:
            return PassResult(False)
        new = from_graphsurgeon(graph, like=model)
        nodes_before = sum(1 for _ in model.graph.all_nodes())
        model.graph, model.opset_imports, model.functions = new.graph, new.opset_imports, new.functions
        return PassResult(True, {"nodes_delta": sum(1 for _ in model.graph.all_nodes()) - nodes_before})


def graphsurgeon_pass(name: str, function: Callable[..., Any] | None = None, *, effect: Effect = Effect.EXACT,
                      doc: str | None = None):
    """Register `function(graph: gs.Graph)` as a pass named `name`. Works as a call
    (`graphsurgeon_pass("x", fn)`) or as a decorator (`@graphsurgeon_pass("x")`);
    returns the pass class."""

    def make(fn: Callable[..., Any]) -> type[GraphSurgeonPass]:
        class_name = "".join(part.capitalize() for part in re.split(r"[-_]", name)) + "Pass"
        attrs = {"function": staticmethod(fn), "effect": effect,
                 "__doc__": doc or (fn.__doc__ or f"onnx-graphsurgeon function {fn.__name__}").strip()}
        return register_pass(name)(type(class_name, (GraphSurgeonPass,), attrs))

    return make(function) if function is not None else make
