"""The one table of knowledge modes: their names, what each sends, what its peers must agree on.

A leaf (no torch, no trio): `wire` derives what must match in a hello and which knowledge kinds are
legal from it, `config` the names a scenario may use, `assemble` what a parameter mode averages, and
`modes` asserts at import that its classes agree with it. Adding a mode is a row here and a class there.
"""

from __future__ import annotations

from dataclasses import dataclass

KNOWLEDGE_KINDS = ("logits", "params", "prototypes", "class-logits")
# kinds that say something about each class, one row per class, and what their rows' width is: class means
# of a node's own private rows (shared without differential privacy, whatever the learner does)
PER_CLASS_KINDS = {"prototypes": "embed_dim", "class-logits": "classes"}
# hello fields that must be equal on both sides in every mode
ALWAYS_MATCH = ("version", "mode", "num_classes", "ref_digest")


@dataclass(frozen=True)
class ModeFacts:
    name: str
    kinds: tuple[str, ...]  # knowledge kinds it sends (none: shares nothing, still says hello and bye)
    # hello fields beyond ALWAYS_MATCH that must be equal: architectures may differ where knowledge is
    # shared as predictions or through a shared adapter (heterogeneous models are the point)
    must_match: tuple[str, ...] = ()
    # what a parameter mode averages when adapter.kind = "auto" (None: no adapter). Measured on quickstart
    # (docs/experiments.md, "Adapter and hybrid modes"): alone, sharing the classifier helps most; beside
    # distillation, a shared classifier costs accuracy. fedavg's "adapter" is the whole model, always.
    auto_adapter: str | None = None
    adapter_fixed: bool = False  # True: adapter.kind does not apply (fedavg averages the whole model)

    @property
    def needs_reference(self) -> bool:
        return "logits" in self.kinds


MODE_FACTS: dict[str, ModeFacts] = {m.name: m for m in (
    ModeFacts("logits", ("logits",)),
    ModeFacts("local", ()),
    ModeFacts("fedavg", ("params",), ("arch", "param_count"), auto_adapter="whole", adapter_fixed=True),
    ModeFacts("adapter", ("params",), ("param_count", "adapter_shape"), auto_adapter="bottleneck"),
    ModeFacts("hybrid", ("logits", "params"), ("param_count", "adapter_shape"), auto_adapter="residual"),
    # class means in embed() space: any architectures whose embed_dim is the same (checked per frame)
    ModeFacts("prototypes", ("prototypes",)),
    # FD (federated distillation): per-class mean logits on each node's own rows, no reference set
    ModeFacts("fd", ("class-logits",)),
)}
MODES = tuple(MODE_FACTS)
assert all(set(m.kinds) <= set(KNOWLEDGE_KINDS) for m in MODE_FACTS.values())
