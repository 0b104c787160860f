"""One table of quantization parameters per job: ``{layer: {(wbits, abits): LayerParams}}``.

Calibration fills it for every candidate a job may choose; the sensitivity scores its entries, the allocation picks
among them, reconstruction returns refined entries (``with_entries``), and the bundle and the ONNX export write the
chosen ones. The table is a value: nothing edits it in place, and the model is assembled from it with
``quant.wrap.load_params_(model, table.select(assignment))``, so no stage can undo another's work.

Entries share params: the ``(3, 4)`` and ``(3, 6)`` entries of a layer hold the same 3-bit weight record. Stored
(``to_tensors``/``from_tensors``) the sharing is kept: each distinct record is written once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from ..quantizers import LayerParams
from ..quantizers.serialize import RECORD_VERSION, from_record, to_record

__all__ = ["Pair", "ParamTable", "TableError", "pair_key", "parse_pair"]

Pair = tuple[int, int]


class TableError(ValueError):
    """A table lookup or a stored table that does not fit (missing layer or candidate, corrupt file)."""


def pair_key(pair: Pair) -> str:
    """``"w,a"``: a pair as a JSON object key."""
    return f"{int(pair[0])},{int(pair[1])}"


def parse_pair(key: str) -> Pair:
    w, a = key.split(",")
    return int(w), int(a)


class _Records:
    """The distinct records of one layer, numbered in first-seen order, their tensors written into ``tensors``."""

    def __init__(self, prefix: str, tensors: dict[str, torch.Tensor]) -> None:
        self.prefix, self.tensors = prefix, tensors
        self.names: dict[int, str] = {}
        self.meta: dict[str, dict] = {}

    def ref(self, record) -> str | None:
        if record is None:
            return None
        if id(record) not in self.names:
            name = str(len(self.names))
            self.names[id(record)] = name
            meta, values = to_record(record)
            self.meta[name] = meta
            self.tensors.update({f"{self.prefix}{name}.{k}": v for k, v in values.items()})
        return self.names[id(record)]


@dataclass(frozen=True, eq=False)
class ParamTable:
    """``entries[layer][pair]``: the params a layer runs with at that candidate (see the module doc)."""

    entries: Mapping[str, Mapping[Pair, LayerParams]]

    def layers(self) -> tuple[str, ...]:
        return tuple(self.entries)

    def pairs(self, layer: str) -> tuple[Pair, ...]:
        """The candidates the table holds for ``layer``."""
        return tuple(self.entries.get(layer, {}))

    def entry(self, layer: str, pair: Pair) -> LayerParams:
        """The params of ``layer`` at ``pair``; ``TableError`` naming what the table has when it has not that."""
        pair = (int(pair[0]), int(pair[1]))
        layer_entries = self.entries.get(layer)
        if layer_entries is None:
            raise TableError(f"the parameter table has no layer {layer!r} (it has {list(self.entries)[:4]}...)")
        if pair not in layer_entries:
            raise TableError(f"the parameter table has no entry for {layer!r} at (wbits, abits) {pair}; it has "
                             f"{sorted(layer_entries)}")
        return layer_entries[pair]

    def select(self, assignment: Mapping[str, Pair]) -> dict[str, LayerParams]:
        """``{layer: params}`` of an assignment ``{layer: pair}`` (what ``load_params_`` takes)."""
        return {layer: self.entry(layer, pair) for layer, pair in assignment.items()}

    def with_entries(self, updates: Mapping[str, Mapping[Pair, LayerParams]]) -> ParamTable:
        """A new table with ``updates`` replacing (or adding) entries; this table is unchanged."""
        merged = {layer: dict(pairs) for layer, pairs in self.entries.items()}
        for layer, pairs in updates.items():
            merged.setdefault(layer, {}).update({(int(p[0]), int(p[1])): v for p, v in pairs.items()})
        return ParamTable(merged)

    # ---- storage ---------------------------------------------------------------------------------------------
    def to_tensors(self, prefix: str = "") -> tuple[dict, dict[str, torch.Tensor]]:
        """``(index, tensors)``: a JSON-able index and the named tensors (each distinct record once)."""
        index: dict = {"version": RECORD_VERSION, "layers": {}}
        tensors: dict[str, torch.Tensor] = {}
        for layer, pairs in self.entries.items():
            records = _Records(f"{prefix}{layer}/", tensors)
            entries = {pair_key(pair): {"weight": records.ref(p.weight), "inputs": [records.ref(x) for x in p.inputs]}
                       for pair, p in pairs.items()}
            index["layers"][layer] = {"records": records.meta, "entries": entries}
        return index, tensors

    @classmethod
    def from_tensors(cls, index: dict, tensors: Mapping[str, torch.Tensor], prefix: str = "") -> ParamTable:
        """The table ``to_tensors`` wrote; ``TableError`` for a version or content that does not fit."""
        if not isinstance(index, dict) or index.get("version") != RECORD_VERSION:
            raise TableError(f"parameter table version {index.get('version') if isinstance(index, dict) else None!r}"
                             f" is not {RECORD_VERSION}: calibrate again")
        grouped: dict[str, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                record, _, field_name = key[len(prefix):].rpartition(".")
                grouped.setdefault(record, {})[field_name] = value
        entries: dict[str, dict[Pair, LayerParams]] = {}
        for layer, data in index.get("layers", {}).items():
            records: dict[str, object] = {}
            for name, meta in data["records"].items():
                values = grouped.get(f"{layer}/{name}", {})
                try:
                    records[name] = from_record(meta, values, where=f"{layer} record {name}")
                except ValueError as exc:
                    raise TableError(str(exc)) from exc
            entries[layer] = {
                parse_pair(key): LayerParams(records[e["weight"]] if e["weight"] is not None else None,
                                             tuple(records[x] if x is not None else None for x in e["inputs"]))
                for key, e in data["entries"].items()}
        return cls(entries)

    def digest(self) -> str:
        """sha256 of the table's content (index and tensor bytes): equal for equal tables."""
        index, tensors = self.to_tensors()
        digest = hashlib.sha256(json.dumps(index, sort_keys=True).encode())
        for name in sorted(tensors):
            t = tensors[name].contiguous()
            digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
            digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return digest.hexdigest()
