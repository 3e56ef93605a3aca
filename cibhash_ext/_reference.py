"""Pure-PyTorch versions of every op, written for clarity: the tests hold the kernels to them
exactly, and the benchmarks use them as the PyTorch baseline's oracle.

The stochastic binary layer is transcribed operation by operation from ``csrc/ops/binarize_math.h``
(Philox4x32-10 and a sigmoid built from correctly rounded float32 + - * /), so its bits and
gradients equal the kernels' exactly, not only within a tolerance.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF


def pack_bits(x: torch.Tensor) -> torch.Tensor:
    bits = (x > 0).to(torch.uint8)
    nbits = bits.shape[-1]
    pad = (-nbits) % 8
    if pad:
        bits = torch.nn.functional.pad(bits, (0, pad))
    bits = bits.reshape(*bits.shape[:-1], -1, 8).to(torch.int32)
    weights = 2 ** torch.arange(8, dtype=torch.int32, device=x.device)
    return (bits * weights).sum(-1).to(torch.uint8)


def unpack_bits(codes: torch.Tensor, nbits: int) -> torch.Tensor:
    shifts = torch.arange(8, dtype=torch.uint8, device=codes.device)
    bits = (codes.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*codes.shape[:-1], codes.shape[-1] * 8)[..., :nbits].contiguous()


def _mulhilo32(a: torch.Tensor, b: int) -> tuple[torch.Tensor, torch.Tensor]:
    # a < 2^32 and b < 2^32, so the product fits 64 bits; int64 multiplication wraps modulo 2^64,
    # which keeps bits 0..63 of it exact.
    product = a * b
    return (product >> 32) & _MASK32, product & _MASK32


def philox4x32_10(counter: list[torch.Tensor], key: tuple[int, int]) -> list[torch.Tensor]:
    """Philox4x32-10 on int64 tensors holding uint32 values; returns the 4 output words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for round_ in range(10):
        if round_ > 0:
            k0 = (k0 + 0x9E3779B9) & _MASK32
            k1 = (k1 + 0xBB67AE85) & _MASK32
        hi0, lo0 = _mulhilo32(c0, 0xD2511F53)
        hi1, lo1 = _mulhilo32(c2, 0xCD9E8D57)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return [c0, c1, c2, c3]


def uniforms(n: int, seed: int, offset: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The n uniforms in [0, 1) a stochastic_binarize call with (seed, offset) uses, float32."""
    blocks = (n + 3) // 4
    g = torch.arange(blocks, dtype=torch.int64, device=device)
    counter = [g & _MASK32, (g >> 32) & _MASK32]
    counter += [torch.full_like(g, offset & _MASK32), torch.full_like(g, (offset >> 32) & _MASK32)]
    words = torch.stack(philox4x32_10(counter, (seed & _MASK32, (seed >> 32) & _MASK32)), dim=1).reshape(-1)[:n]
    return (words >> 8).to(torch.float32) * (2.0**-24)


def _f32(value: float, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float32, device=like.device)


def _exp_neg_abs(z: torch.Tensor) -> torch.Tensor:
    """t = e^-|z| in float32, bit-identical to ``exp_nonpositive(-|z|)`` in binarize_math.h."""
    x = -z.abs()
    n = torch.floor(x * _f32(1.44269504088896341, z) + _f32(0.5, z))
    r = x - n * _f32(0.693359375, z)
    r = r - n * _f32(-2.12194440e-4, z)
    y = torch.full_like(r, 1.9875691500e-4)
    for c in (1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1):
        y = y * r + _f32(c, z)
    y = (y * (r * r) + r) + _f32(1.0, z)
    exponent = (n.clamp(min=-126).to(torch.int32) + 127) << 23
    return torch.where(x < -87.0, torch.zeros_like(y), y * exponent.view(torch.float32))


def sigmoid_exact(z: torch.Tensor) -> torch.Tensor:
    """float32 sigmoid, bit-identical to ``sigmoid_exact`` in csrc/ops/binarize_math.h."""
    z = z.to(torch.float32)
    t = _exp_neg_abs(z)
    d = t + _f32(1.0, z)
    p = torch.where(z >= 0, _f32(1.0, z) / d, t / d)
    return torch.where(torch.isnan(z), z, p)


def stochastic_binarize_forward(logits: torch.Tensor, stochastic: bool, seed: int, offset: int) -> torch.Tensor:
    z = logits.to(torch.float32)
    if stochastic:
        u = uniforms(z.numel(), seed, offset, z.device).reshape(z.shape)
        bits = u < sigmoid_exact(z)
    else:
        bits = z > 0
    return bits.to(logits.dtype)


def stochastic_binarize_backward(grad_codes: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    # p (1 - p) = (1/d) (t/d) with t = e^-|z|, d = 1 + t: no cancellation in 1 - p.
    z = logits.to(torch.float32)
    t = _exp_neg_abs(z)
    d = t + _f32(1.0, z)
    grad = grad_codes.to(torch.float32) * ((_f32(1.0, z) / d) * (t / d))
    return torch.where(torch.isnan(z), z, grad).to(logits.dtype)


def hamming_distance(queries: torch.Tensor, database: torch.Tensor) -> torch.Tensor:
    # For 0/1 bit vectors, |a xor b| = |a| + |b| - 2 a.b; every partial sum is an integer below
    # 2^24, so float32 arithmetic is exact here.
    nbits = 8 * queries.shape[1]
    qb = unpack_bits(queries, nbits).to(torch.float32)
    db = unpack_bits(database, nbits).to(torch.float32)
    dist = qb.sum(1, keepdim=True) + db.sum(1) - 2 * (qb @ db.T)
    return dist.round().to(torch.int32)


def hamming_topk(queries: torch.Tensor, database: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    if database.shape[0] == 0:
        k = 0
    # A stable sort keeps equal distances in database order: the lower index comes first.
    dist, idx = torch.sort(hamming_distance(queries, database), dim=1, stable=True)
    return dist[:, :k].contiguous(), idx[:, :k].contiguous()


def hamming_radius(
    queries: torch.Tensor, database: torch.Tensor, radius: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dist, idx = torch.sort(hamming_distance(queries, database), dim=1, stable=True)
    keep = dist <= radius
    lims = torch.zeros(queries.shape[0] + 1, dtype=torch.int64, device=queries.device)
    lims[1:] = keep.sum(1).cumsum(0)
    return lims, dist[keep], idx[keep]


def _allowed(allow: torch.Tensor, n: int) -> torch.Tensor:
    """The allow bitmap (uint8, bit i of byte i // 8) as a bool mask over n codes."""
    return unpack_bits(allow[: (n + 7) // 8].reshape(1, -1), max(n, 1))[0, :n].bool()


def hamming_topk_filtered(
    queries: torch.Tensor, database: torch.Tensor, k: int, allow: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.nonzero(_allowed(allow, database.shape[0])).reshape(-1).to(queries.device)
    dist, idx = hamming_topk(queries, database[keep], min(k, keep.numel()))
    return dist, keep[idx]


def hamming_radius_filtered(
    queries: torch.Tensor, database: torch.Tensor, radius: int, allow: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keep = torch.nonzero(_allowed(allow, database.shape[0])).reshape(-1).to(queries.device)
    lims, dist, idx = hamming_radius(queries, database[keep], radius)
    return lims, dist, keep[idx]
