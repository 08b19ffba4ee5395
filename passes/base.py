"""Pass base class: a registry name, a dataclass of options, a declared effect on
outputs, and one `run(model) -> PassResult`."""
from __future__ import annotations

import dataclasses
import enum
from typing import Any, ClassVar

from ..ir import Model


class Effect(enum.Enum):
    """What a pass promises about the model's outputs; the manager picks the check."""

    EXACT = "exact"          # same outputs (float rounding of reassociation only)
    TOLERANCE = "tolerance"  # within float tolerance (e.g. refolded weights)
    LOSSY = "lossy"          # changes outputs on purpose (quantize, prune, low-rank)


@dataclasses.dataclass
class PassResult:
    changed: bool
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class NoOptions:
    pass


class Pass:
    """Subclass, set `name` (via @register_pass), `Options`, `effect`, and implement
    `run`. Mutate the model in place through the IR methods; return whether anything
    changed. Raise PassError for conditions you detect; anything else is wrapped."""

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    effect: ClassVar[Effect] = Effect.EXACT
    # Analyses still valid after this pass changed the model (see passes.analysis).
    preserves: ClassVar[frozenset[str]] = frozenset()
    # Absolute/relative tolerance the numeric check allows for EXACT/TOLERANCE passes.
    atol: ClassVar[float] = 1e-5
    rtol: ClassVar[float] = 1e-4

    def __init__(self, options: Any = None):
        self.options = options if options is not None else self.Options()

    def run(self, model: Model) -> PassResult:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options})"
