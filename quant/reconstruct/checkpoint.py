"""Per-block checkpoints of a reconstruction run, so an interrupted run resumes at the next unfinished block.

Layout under ``workdir``: ``block_{i:03d}.safetensors`` (the refined params of finished block ``i``'s layers: learned
weight codes and grids, learned input scales; the records' index in the file's metadata) and ``state.json``
(``version``, ``fingerprint``, ``blocks_done``, the finished blocks' reports). Files are written to a temporary
name and renamed, and ``state.json`` only after the block file, so a crash never leaves a half-written block that
counts as done. Tensors are stored with safetensors (never pickled).

The fingerprint has two parts: ``config`` (options, images, block names, every tensor of both models) must match
exactly; ``blocks`` holds a digest of each block's starting params, and only the blocks that are not finished yet
are compared on resume (the finished ones are loaded from their files).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..calibration import ParamTable
from ..quantizers import LayerParams

__all__ = ["BlockCheckpoint", "tensor_digest"]

VERSION = 2
_ENTRY = (0, 0)  # the one "pair" under which a checkpoint stores each layer's params


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of ``tensors`` (sorted by name)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}:{tuple(tensors[name].shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


class BlockCheckpoint:
    """Reads and writes the checkpoint folder of one reconstruction run."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.state_path = self.folder / "state.json"

    def _block_path(self, index: int) -> Path:
        return self.folder / f"block_{index:03d}.safetensors"

    def load_state(self) -> dict | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return state if isinstance(state, dict) and state.get("version") == VERSION else None

    def usable_blocks(self, fingerprint: dict) -> tuple[int, list[dict], str]:
        """``(blocks_done, their reports, note)`` that this run may reuse (0 when nothing matches)."""
        state = self.load_state()
        if state is None:
            return 0, [], "no checkpoint"
        stored = state.get("fingerprint", {})
        if stored.get("config") != fingerprint["config"]:
            return 0, [], "checkpoint from different settings ignored; started over"
        done = int(state.get("blocks_done", 0))
        if stored.get("blocks", [])[done:] != fingerprint["blocks"][done:]:
            return 0, [], "quantized model differs from the checkpointed run; started over"
        if not all(self._block_path(i).is_file() for i in range(done)):
            return 0, [], "checkpoint files missing; started over"
        return done, list(state.get("blocks", []))[:done], f"resumed after {done} finished blocks"

    def load_block(self, index: int) -> dict[str, LayerParams]:
        """The refined params ``{layer: LayerParams}`` of finished block ``index``."""
        with safe_open(str(self._block_path(index)), framework="pt") as handle:
            index_json = json.loads(handle.metadata()["index"])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        table = ParamTable.from_tensors(index_json, tensors)
        return {layer: table.entry(layer, _ENTRY) for layer in table.layers()}

    def save_block(self, index: int, params: dict[str, LayerParams], fingerprint: dict,
                   reports: list[dict]) -> None:
        """Write block ``index``'s refined params, then mark blocks ``0..index`` as done."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._block_path(index)
        tmp = path.with_suffix(".tmp")
        index_json, tensors = ParamTable({layer: {_ENTRY: p} for layer, p in params.items()}).to_tensors()
        save_file({k: v.contiguous().clone() for k, v in tensors.items()}, str(tmp),
                  metadata={"index": json.dumps(index_json)})
        os.replace(tmp, path)
        state = {"version": VERSION, "fingerprint": fingerprint, "blocks_done": index + 1, "blocks": reports}
        tmp_state = self.state_path.with_suffix(".tmp")
        tmp_state.write_text(json.dumps(state, indent=1))
        os.replace(tmp_state, self.state_path)
