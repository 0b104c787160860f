"""Placeholders: let ``torch.export`` write the float parts of a model and emitters write the quantized ones.

Before the export every quantized part of the model (a deployment-target layer, a static activation grid, a weight's
integer codes) is replaced by a ``PlaceholderOp``: during ``torch.onnx.export`` it becomes one node
``mpq.placeholder::Placeholder`` carrying its ``key`` (a layer's name, ``{layer}.inputs.0``, ``{layer}.weight``).
``Placeholders.replace(model_proto)`` then swaps each such node for the nodes its emitter writes (graph surgery):
the emitter reads the placeholder's inputs and writes its output, so the surrounding graph is untouched. Emitters
are the same functions the latency graphs call, so the exported nodes of a layer are the measured ones.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import onnx
import torch
from torch import nn

from .graph import OnnxExportError, Sink

__all__ = ["DOMAIN", "Emitter", "PlaceholderOp", "Placeholders"]

#: Operator domain of placeholder nodes (none is left in an exported model).
DOMAIN = "mpq.placeholder"
#: ``emitter(sink, input names, output name)``: writes the nodes that replace one placeholder.
Emitter = Callable[[Sink, list[str], str], None]


class PlaceholderOp(nn.Module):
    """A float32 tensor of ``shape(*inputs)`` that exists only in an ONNX export (``torch.onnx.ops.symbolic``)."""

    def __init__(self, key: str, shape: Callable[..., Sequence]) -> None:
        super().__init__()
        self.key = key
        self.shape = shape

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not torch.onnx.is_in_onnx_export():
            raise RuntimeError(f"placeholder {self.key!r} only runs inside torch.onnx.export")
        return torch.onnx.ops.symbolic(f"{DOMAIN}::Placeholder", inputs, {"key": self.key}, dtype=torch.float32,
                                       shape=tuple(self.shape(*inputs)), version=1)

    def extra_repr(self) -> str:
        return self.key


class Placeholders:
    """The placeholders of one export and the emitter of each (``add``), and the surgery (``replace``)."""

    def __init__(self) -> None:
        self._emitters: dict[str, Emitter] = {}

    def add(self, key: str, emitter: Emitter, shape: Callable[..., Sequence]) -> PlaceholderOp:
        """A ``PlaceholderOp`` for ``key`` whose node ``emitter`` will write; ``shape(*inputs)`` is its output shape
        (symbolic batch sizes allowed). Keys are unique."""
        if key in self._emitters:
            raise ValueError(f"placeholder key {key!r} is used twice")
        self._emitters[key] = emitter
        return PlaceholderOp(key, shape)

    def replace(self, model: onnx.ModelProto) -> Counter:
        """Replace every placeholder node of ``model`` in place by its emitter's nodes (same position, inputs and
        output), add their initializers and operator domains, drop the placeholder domain. Returns the emitters'
        ``Sink.counts`` summed over keys (a placeholder called twice counts once). Raises ``OnnxExportError`` for a
        placeholder without an emitter."""
        sinks: dict[str, Sink] = {}
        counts: Counter = Counter()
        nodes: list[onnx.NodeProto] = []
        for node in model.graph.node:
            if node.domain != DOMAIN:
                nodes.append(node)
                continue
            key = next(a.s.decode() for a in node.attribute if a.name == "key")
            if key not in self._emitters:
                raise OnnxExportError(f"placeholder {key!r} in the exported graph has no emitter")
            first = key not in sinks
            sink = sinks.setdefault(key, Sink(key))
            self._emitters[key](sink, list(node.input), node.output[0])
            nodes.extend(sink.take_nodes())
            if first:
                counts.update(sink.counts)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        domains: dict[str, int] = {}
        for sink in sinks.values():
            model.graph.initializer.extend(sink.initializers.values())
            domains.update(sink.domains)
        opsets = [o for o in model.opset_import if o.domain != DOMAIN]
        known = {o.domain for o in opsets}
        opsets += [onnx.helper.make_opsetid(d, v) for d, v in sorted(domains.items()) if d not in known]
        del model.opset_import[:]
        model.opset_import.extend(opsets)
        return counts
