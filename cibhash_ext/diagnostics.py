"""Label-free diagnostics of binary codes: augmented-copy retrieval (recall@k of each query's original)
and statistics of the codes themselves (bit balance, bit correlation, buckets, nearest-neighbour distances).

These stand in for mAP when a dataset has no labels (a folder of images). Ranking everywhere is by
Hamming distance with equal distances ordered by the lower database index, the tie rule of
:func:`cibhash_ext.ops.hamming_topk`; every search runs in query chunks, so memory stays bounded.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from cibhash_ext import ops

__all__ = ["copy_recall", "code_statistics", "evaluate_unlabelled"]

# Rows of unpacked bits per step of the bit-correlation sums: 65536 x 256 bits in float64 is 128 MiB.
_GRAM_ROWS = 65536


def _check_codes(codes, name: str) -> None:
    if not isinstance(codes, Tensor) or codes.dtype != torch.uint8 or codes.dim() != 2:
        got = f"{codes.dtype} tensor of shape {tuple(codes.shape)}" if isinstance(codes, Tensor) else type(codes).__name__
        raise TypeError(f"{name} must be a 2-D uint8 tensor of packed codes, got {got}")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_nbits(codes: Tensor, nbits, name: str) -> int:
    nbits = _check_int(nbits, "nbits", 1)
    if codes.shape[1] != (nbits + 7) // 8:
        raise ValueError(f"{name} must have ceil(nbits / 8) = {(nbits + 7) // 8} bytes per code for nbits={nbits}, got {codes.shape[1]}")
    if nbits % 8 and len(codes):
        # Padding bits would count in every Hamming distance and push it past nbits.
        padding = 0xFF & ~((1 << (nbits % 8)) - 1)
        if bool((codes[:, -1] & padding).any()):
            raise ValueError(f"{name} has nonzero padding bits above bit {nbits - 1} (codes must come from pack_bits of {nbits} bits)")
    return nbits


def copy_recall(
    query_codes: Tensor,
    database_codes: Tensor,
    targets: Tensor,
    ks: Sequence[int] = (1, 10),
    chunk: int = 1024,
) -> dict[str, float]:
    """Recall@k of each query's own original in the database (augmented-copy retrieval).

    Query i is an augmented copy of database row ``targets[i]``; it counts as found at k when that
    row is among its k nearest database codes by Hamming distance, equal distances ordered by the
    lower database index (so a target tied with a lower-index competitor loses at k = 1).

    Args:
        query_codes (Tensor[Q, B], uint8): packed codes of the augmented copies.
        database_codes (Tensor[N, B], uint8): packed codes of the database, same width and device.
        targets (Tensor[Q], int64): database row of each query's original, in [0, N).
        ks (Sequence[int]): cut-offs k >= 1; a k above N is clipped to N.
        chunk (int): queries per search, bounding memory to O(chunk * max(ks)).

    Returns:
        dict[str, float]: ``{str(k): fraction of queries whose target is in their top k}`` for each
        requested k (keys are the requested k, before clipping). No queries give 0.0 for every k.
    """
    _check_codes(query_codes, "query_codes")
    _check_codes(database_codes, "database_codes")
    if query_codes.shape[1] != database_codes.shape[1]:
        raise ValueError(
            f"query_codes and database_codes must have the same width, got {query_codes.shape[1]} and {database_codes.shape[1]} bytes"
        )
    if not isinstance(targets, Tensor) or targets.dtype != torch.int64 or targets.dim() != 1:
        got = f"{targets.dtype} tensor of shape {tuple(targets.shape)}" if isinstance(targets, Tensor) else type(targets).__name__
        raise TypeError(f"targets must be a 1-D int64 tensor of database rows, got {got}")
    if len(targets) != len(query_codes):
        raise ValueError(f"targets must have one entry per query ({len(query_codes)}), got {len(targets)}")
    if isinstance(ks, (str, bytes)) or not isinstance(ks, Sequence) or not ks:
        raise TypeError(f"ks must be a non-empty sequence of ints, got {ks!r}")
    ks = [_check_int(k, "every k in ks", 1) for k in ks]
    chunk = _check_int(chunk, "chunk", 1)
    n = len(database_codes)
    if len(targets) and (int(targets.min()) < 0 or int(targets.max()) >= n):
        raise ValueError(f"targets must lie in [0, {n}) (rows of database_codes), got values in [{int(targets.min())}, {int(targets.max())}]")
    hits = torch.zeros(len(ks), dtype=torch.int64)
    kmax = min(max(ks), n)
    clipped = torch.tensor([min(k, n) for k in ks])
    for start in range(0, len(query_codes), chunk):
        _, idx = ops.hamming_topk(query_codes[start:start + chunk], database_codes, kmax)
        found = idx == targets[start:start + chunk].to(idx.device)[:, None]
        # Rank of the target (kmax when absent); found at k iff rank < k.
        rank = torch.where(found.any(dim=1), found.int().argmax(dim=1), kmax).cpu()
        hits += (rank[:, None] < clipped[None, :]).sum(dim=0)
    q = len(query_codes)
    return {str(k): (float(h) / q if q else 0.0) for k, h in zip(ks, hits.tolist())}


def code_statistics(codes: Tensor, nbits: int, sample: int = 2000, seed: int = 0) -> dict:
    """Statistics of a set of codes that need no labels: how evenly the bits split, how redundant
    they are, how the codes crowd into buckets, and how far each code is from its nearest neighbour.

    Args:
        codes (Tensor[N, B], uint8): packed codes (the database), N >= 1, B = ceil(nbits / 8),
            padding bits 0.
        nbits (int): bits per code.
        sample (int): at most this many codes (drawn without replacement with ``seed``; all of
            them when N <= sample) get their nearest-neighbour distance.
        seed (int): seed of the sample.

    Returns:
        dict with
            ``bit_balance`` (list of nbits float): fraction of codes with each bit set;
            ``balance_error`` (float): mean over bits of ``|p - 0.5|``; ``max_balance_error`` (float);
            ``bit_correlation_mean_abs``, ``bit_correlation_max_abs`` (float): mean and max of
            ``|Pearson correlation|`` over pairs of distinct bits across the codes; a constant bit
            has correlation 0 with every bit (0.0 for both when nbits == 1);
            ``distinct_codes`` (int); ``largest_bucket`` (int): the most codes sharing one code;
            ``nn_distance_histogram`` (list of nbits + 1 int): entry d counts sampled codes whose
            nearest other database row (itself excluded, so a duplicate elsewhere gives 0) is at
            Hamming distance d; ``nn_distance_mean`` (float, None when N == 1: no other row);
            ``nn_distance_sample`` (int): the number of sampled codes.
    """
    _check_codes(codes, "codes")
    nbits = _check_nbits(codes, nbits, "codes")
    sample = _check_int(sample, "sample", 1)
    seed = _check_int(seed, "seed", 0)
    n = len(codes)
    if n == 0:
        raise ValueError("codes must hold at least one code, got 0 rows")

    # Bit balance and correlation from exact integer sums: ones per bit and the Gram matrix of the
    # {0, 1} bits (integers below 2**53 are exact in float64), accumulated over row blocks.
    ones = torch.zeros(nbits, dtype=torch.float64, device=codes.device)
    gram = torch.zeros(nbits, nbits, dtype=torch.float64, device=codes.device)
    for start in range(0, n, _GRAM_ROWS):
        bits = ops.unpack_bits(codes[start:start + _GRAM_ROWS], nbits).to(torch.float64)
        ones += bits.sum(dim=0)
        gram += bits.T @ bits
    p = ones / n
    cov = gram / n - p[:, None] * p[None, :]
    std = (p * (1 - p)).sqrt()
    denom = std[:, None] * std[None, :]
    corr = torch.where(denom > 0, cov / denom.clamp_min(1e-300), torch.zeros_like(cov)).clamp(-1, 1)
    off = ~torch.eye(nbits, dtype=torch.bool, device=codes.device)
    off_abs = corr[off].abs()
    balance = (p - 0.5).abs()

    _, counts = torch.unique(codes, dim=0, return_counts=True)

    hist = torch.zeros(nbits + 1, dtype=torch.int64)
    picks = torch.arange(n) if n <= sample else torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:sample]
    nn_sum = 0
    if n > 1:
        for start in range(0, len(picks), 1024):
            rows = picks[start:start + 1024].to(codes.device)
            dist, _ = ops.hamming_topk(codes[rows], codes, 2)
            # The second distance is always the nearest other row's: the row itself (distance 0)
            # is first, unless lower-index duplicates precede it, and then the second hit is
            # itself or another duplicate, at 0 either way.
            nearest = dist[:, 1].long().cpu()
            hist += torch.bincount(nearest, minlength=nbits + 1)
            nn_sum += int(nearest.sum())
    return {
        "bit_balance": p.tolist(),
        "balance_error": float(balance.mean()),
        "max_balance_error": float(balance.max()),
        "bit_correlation_mean_abs": float(off_abs.mean()) if off_abs.numel() else 0.0,
        "bit_correlation_max_abs": float(off_abs.max()) if off_abs.numel() else 0.0,
        "distinct_codes": len(counts),
        "largest_bucket": int(counts.max()),
        "nn_distance_histogram": hist.tolist(),
        "nn_distance_mean": nn_sum / len(picks) if n > 1 else None,
        "nn_distance_sample": len(picks) if n > 1 else 0,
    }


def evaluate_unlabelled(
    query_codes: Tensor,
    database_codes: Tensor,
    targets: Tensor,
    nbits: int,
    ks: Sequence[int] = (1, 10),
) -> dict:
    """Every label-free metric for one code length and one method.

    Args:
        query_codes (Tensor[Q, B], uint8): packed codes of augmented copies of held-out images.
        database_codes (Tensor[N, B], uint8): packed codes of the database holding their originals.
        targets (Tensor[Q], int64): database row of each query's original.
        nbits (int): bits per code, B = ceil(nbits / 8).
        ks (Sequence[int]): recall cut-offs.

    Returns:
        dict: ``{"copy_recall": copy_recall(...), "codes": code_statistics(database_codes, nbits)}``.
    """
    _check_codes(query_codes, "query_codes")
    _check_nbits(query_codes, nbits, "query_codes")
    return {
        "copy_recall": copy_recall(query_codes, database_codes, targets, ks),
        "codes": code_statistics(database_codes, nbits),
    }
