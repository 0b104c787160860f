"""Bit packing of unsigned integer codes (1..8 bits) into uint8 byte streams, and back.

Layout (format ``lsb8``): the codes of a tensor are flattened in row-major order and zero-padded to a multiple of
8; each group of 8 codes ``c0..c7`` becomes the little-endian ``bits``-byte integer ``sum(c_i << (i * bits))``.
So 8 codes of ``b`` bits take exactly ``b`` bytes, for every ``b`` (2-bit: 4 codes per byte, 4-bit: 2 per byte
with the first code in the low nibble, 3/5/6/7-bit: codes straddle byte boundaries, 8-bit: the codes
themselves, unpadded). The packed size of ``n`` codes is ``ceil(n / 8) * bits`` bytes (``n`` at 8 bits), at most
``bits - 1`` bytes above the ideal ``n * bits / 8``.

``pack_nibbles`` is the 4-bit layout of ONNX: two codes per byte along the last axis, the even index in the low
nibble, an odd length zero-padded (``uint4`` initializers and ``com.microsoft.MatMulNBits`` weights and zero points);
for the codes of one flattened tensor it is the first ``ceil(n / 2)`` bytes of ``pack_codes(codes, 4)``.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["PACKING", "pack_codes", "pack_nibbles", "packed_nbytes", "unpack_codes"]

#: Name of the layout, stored in ``quant_config.json``.
PACKING = "lsb8"
_GROUP = 8


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes that ``numel`` codes of ``bits`` bits take when packed."""
    _check_bits(bits)
    if bits == 8:
        return int(numel)
    return -(-int(numel) // _GROUP) * bits


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or not 1 <= bits <= 8:
        raise ValueError(f"codes can be packed at 1..8 bits, got {bits!r}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer ``codes`` (any shape, values in ``[0, 2^bits - 1]``) into a 1-D uint8 tensor.

    Raises ``ValueError`` when a code does not fit in ``bits`` bits or is not an integer.
    """
    _check_bits(bits)
    flat = codes.detach().reshape(-1).cpu()
    if flat.is_floating_point() and not torch.equal(flat, flat.round()):
        raise ValueError("codes must be integers")
    flat = flat.to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) > (1 << bits) - 1):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] for {bits} bits; "
                         f"got [{int(flat.min())}, {int(flat.max())}]")
    if bits == 8:
        return flat.to(torch.uint8)
    pad = (-flat.numel()) % _GROUP
    groups = torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, _GROUP)
    shifts = torch.arange(_GROUP, dtype=torch.int64) * bits
    words = (groups << shifts).sum(dim=1)  # at most 56 bits, no overflow in int64
    byte_shifts = torch.arange(bits, dtype=torch.int64) * 8
    return ((words[:, None] >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)


def unpack_codes(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the first ``numel`` codes as a 1-D uint8 tensor.

    Raises ``ValueError`` when ``packed`` is not a 1-D uint8 tensor of ``packed_nbytes(numel, bits)`` bytes.
    """
    expected = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(f"packed codes must be a 1-D uint8 tensor of {expected} bytes for {numel} codes at "
                         f"{bits} bits; got {packed.dtype} of shape {tuple(packed.shape)}")
    packed = packed.cpu()
    if bits == 8:
        return packed.clone()
    rows = packed.to(torch.int64).reshape(-1, bits)
    words = (rows << (torch.arange(bits, dtype=torch.int64) * 8)).sum(dim=1)
    shifts = torch.arange(_GROUP, dtype=torch.int64) * bits
    codes = (words[:, None] >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """Pack 4-bit codes (integers in ``[0, 15]``, any shape ``[..., n]``) two per byte along the last axis, the even
    index in the low nibble; an odd ``n`` is zero-padded. Returns uint8 ``[..., ceil(n / 2)]``. Raises
    ``ValueError`` for a code outside ``[0, 15]``."""
    codes = np.asarray(codes)
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) > 15):
        raise ValueError(f"4-bit codes must lie in [0, 15]; got [{int(codes.min())}, {int(codes.max())}]")
    codes = codes.astype(np.uint8)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.zeros((*codes.shape[:-1], 1), np.uint8)], axis=-1)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).astype(np.uint8)
