"""Which bit pairs a job may give each layer: the candidates of the allocation and of the parameter table.

A layer is described by its component (``qkv``, ``matmul_av``, ``patch_embed``...) and whether it has weights.

- ``fixed_pair``: a pair the job pins: ``fixed_layers``, or ``(head_bits, head_bits)`` for the patch embedding and
  the head; layers without weights take wbits 16.
- ``candidate_pairs``: what the allocation may choose: on ``sim`` every ``candidate_wbits x candidate_abits`` pair
  (``(16, a)`` for layers without weights), on a runtime target the keys of the forms the target executes for the
  component (restricted to ``method.forms``); plus the fixed pair.
- ``table_pairs``: what calibration fits per layer: a uniform job's single pair, a mixed job's fixed pair for pinned
  layers and the candidates for the others.
- ``reference_pairs``: the partner width of the output-aware search and the reparameterization: a uniform job's own
  pairs; for a mixed job the uniform assignment at ``(4, 4)`` (``(8, 8)``, the ``int8`` form, on a runtime target),
  with the head and fixed layers at their pins. (A uniform job's table entries are therefore exactly what a mixed
  job's table holds for the same pairs when the pairs are the mixed reference.)
"""

from __future__ import annotations

from collections.abc import Mapping

from .config import MethodSpec
from .quantizers import FLOAT_BITS
from .target import forms_for
from .wrap import Pair, uniform_pairs

__all__ = ["LayerKind", "candidate_pairs", "fixed_pair", "reference_pairs", "table_pairs"]

#: ``(component, has_weight)`` of a layer.
LayerKind = tuple[str, bool]
#: Reference widths of a mixed-precision job (sim) and of any job on a runtime target.
MIXED_REFERENCE = (4, 4)
RUNTIME_REFERENCE = (8, 8)


def fixed_pair(name: str, kind: LayerKind, method: MethodSpec) -> Pair | None:
    """The pair the job pins ``name`` at, or None (module doc)."""
    component, has_weight = kind
    fixed = method.fixed_layers.get(name)
    if fixed is None and method.head_bits is not None and component in ("patch_embed", "head"):
        fixed = (method.head_bits, method.head_bits)
    if fixed is None:
        return None
    return (int(fixed[0]) if has_weight else FLOAT_BITS, int(fixed[1]))


def candidate_pairs(name: str, kind: LayerKind, method: MethodSpec) -> tuple[Pair, ...]:
    """The allocation's candidates of ``name`` (module doc), the fixed pair included."""
    component, has_weight = kind
    if method.target != "sim":
        pairs = [(f.wbits, f.abits) for f in forms_for(method.target, component, method.forms)]
    elif not has_weight:
        pairs = [(FLOAT_BITS, int(a)) for a in method.candidate_abits]
    else:
        pairs = [(int(w), int(a)) for w in method.candidate_wbits for a in method.candidate_abits]
    fixed = fixed_pair(name, kind, method)
    if fixed is not None and fixed not in pairs:
        pairs.append(fixed)
    return tuple(pairs)


def _uniform(kinds: Mapping[str, LayerKind], method: MethodSpec, wbits: int, abits: int) -> dict[str, Pair]:
    fixed = {n: tuple(p) for n, p in method.fixed_layers.items() if n in kinds}
    return uniform_pairs({n: k[0] for n, k in kinds.items()}, wbits, abits, method.head_bits, fixed)


def table_pairs(kinds: Mapping[str, LayerKind], method: MethodSpec) -> dict[str, tuple[Pair, ...]]:
    """``{layer: pairs}`` the job's parameter table must hold (module doc)."""
    if not method.budgets:
        return {n: (p,) for n, p in _uniform(kinds, method, method.wbits, method.abits).items()}
    out = {}
    for name, kind in kinds.items():
        fixed = fixed_pair(name, kind, method)
        out[name] = (fixed,) if fixed is not None else candidate_pairs(name, kind, method)
    return out


def reference_pairs(kinds: Mapping[str, LayerKind], method: MethodSpec) -> dict[str, Pair]:
    """``{layer: pair}``: the reference width of every layer (module doc)."""
    if not method.budgets:
        w, a = method.wbits, method.abits
    elif method.target != "sim":
        w, a = RUNTIME_REFERENCE
    else:
        w, a = MIXED_REFERENCE
    return _uniform(kinds, method, w, a)
