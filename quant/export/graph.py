"""Writing ONNX nodes from numpy arrays: the ``Sink`` an emitter appends its nodes and initializers to.

An emitter (``quant.export.qdq``, ``quant.deploy.onnxruntime_cpu.emit``) is a function ``(sink, inputs, output)``
that reads the values named ``inputs``, writes ``output`` and creates whatever initializers and intermediate values
it needs through the sink. The sink prefixes every name it creates with its ``prefix`` (a layer's or a quantizer's
key, so the names in an exported graph say which layer they belong to: ``blocks.0.attn.qkv.weight.codes``), keeps
intermediate names unique when an emitter runs more than once, records the operator domains the nodes use and
counts what was emitted (``counts``, for the model's ``metadata_props``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
from onnx import helper, numpy_helper

__all__ = ["ONNX_OPSET", "OnnxExportError", "Sink"]

#: ONNX default-domain opset of exported models and latency graphs (21: per-axis DequantizeLinear with int4/uint4).
ONNX_OPSET = 21


class OnnxExportError(RuntimeError):
    """The model cannot be exported as asked (a layer's params do not match its form, or the exported graph fails
    ``onnx.checker``); the message names the layer or the check."""


class Sink:
    """Nodes, initializers and operator domains written by emitters, with names under one ``prefix``.

    ``initializer(local, array)`` returns the name of the initializer ``prefix.local`` (created on first use: an
    emitter that runs again for the same prefix shares its initializers); ``value(local)`` a fresh intermediate name;
    ``node(op, inputs, ...)`` appends a node and returns its output name. ``take_nodes()`` hands the nodes written
    since the last call to the caller.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        #: operator domains (other than the default one) the nodes use, with their opset versions.
        self.domains: dict[str, int] = {}
        #: what was emitted (``qdq_activations``, ``qdq_weights``, ``int4_weights``...).
        self.counts: Counter = Counter()
        self._values: set[str] = set()

    def name(self, local: str) -> str:
        """``prefix.local`` (just one of them when the other is empty)."""
        return ".".join(part for part in (self.prefix, local) if part)

    def initializer(self, local: str, array: np.ndarray) -> str:
        """The initializer ``prefix.local`` holding ``array`` (its dtype and shape as given)."""
        name = self.name(local)
        if name not in self.initializers:
            self.initializers[name] = numpy_helper.from_array(np.asarray(array), name)
        return name

    def add_initializer(self, local: str, tensor: onnx.TensorProto) -> str:
        """Add a ready ``TensorProto`` (e.g. packed ``uint4`` data) as the initializer ``prefix.local``."""
        name = self.name(local)
        if name not in self.initializers:
            tensor.name = name
            self.initializers[name] = tensor
        return name

    def value(self, local: str) -> str:
        """A new intermediate value name ``prefix.local`` (``_2``, ``_3``... appended when taken)."""
        base = self.name(local)
        name, serial = base, 1
        while name in self._values or name in self.initializers:
            serial += 1
            name = f"{base}_{serial}"
        self._values.add(name)
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, *, domain: str = "", version: int = 1,
             **attrs) -> str:
        """Append ``op(inputs) -> output`` (a fresh value named after ``op`` when None) and return the output's
        name; ``domain``/``version``: the operator set of a non-default domain (e.g. ``com.microsoft``, 1)."""
        output = output or self.value(op)
        if domain:
            self.domains[domain] = version
        self.nodes.append(helper.make_node(op, inputs, [output], name=self.value(f"{op}_node"), domain=domain,
                                           **attrs))
        return output

    def take_nodes(self) -> list[onnx.NodeProto]:
        """The nodes appended since the last call (the sink forgets them)."""
        nodes, self.nodes = self.nodes, []
        return nodes
