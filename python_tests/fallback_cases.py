"""The public-API calls that test_fallback runs with and without the compiled library (a helper
module, imported by both processes, not a test file)."""

from __future__ import annotations

import numpy as np
import torch


def make_inputs(g: torch.Generator) -> dict:
    codes = torch.randint(0, 256, (300, 5), dtype=torch.uint8, generator=g)
    codes[-20:] = codes[:20]  # planted ties
    return {"logits": torch.randn(64, 37, generator=g), "codes": codes, "queries": codes[::7].clone(),
            "grad": torch.randn(64, 37, generator=g)}


def run(ch, inputs: dict) -> dict:
    """Every public op, the layer, the loss's gradient through the binary layer, the index, and
    documented errors (recorded as 'TypeName: message')."""
    out: dict = {}
    logits, codes, queries = inputs["logits"], inputs["codes"], inputs["queries"]

    def record(name, fn):
        try:
            value = fn()
            out[name] = value if isinstance(value, tuple) else (value,)
        except (TypeError, ValueError) as exc:
            out[name] = f"{type(exc).__name__}: {exc}"

    record("pack", lambda: ch.pack_bits(logits))
    record("unpack", lambda: ch.unpack_bits(ch.pack_bits(logits), 37))
    record("binarize", lambda: ch.stochastic_binarize(logits, generator=torch.Generator().manual_seed(3)))
    record("deterministic", lambda: ch.stochastic_binarize(logits, stochastic=False))

    def gradient():
        z = logits.clone().requires_grad_()
        (ch.stochastic_binarize(z, generator=torch.Generator().manual_seed(4)) * inputs["grad"]).sum().backward()
        return z.grad

    record("gradient", gradient)
    record("distance", lambda: ch.hamming_distance(queries, codes))
    record("topk", lambda: ch.hamming_topk(queries, codes, 25))
    record("radius", lambda: ch.hamming_radius(queries, codes, 15))
    record("layer", lambda: ch.StochasticBinaryLayer().eval()(logits))

    def index_search():
        index = ch.HammingIndex(40)
        index.add(codes, torch.arange(300) * 3)
        dist, ids = index.search(queries, 10)
        return torch.as_tensor(np.asarray(dist)), torch.as_tensor(np.asarray(ids))

    record("index", index_search)
    record("k_too_large", lambda: ch.hamming_topk(queries, codes, 301))
    record("width_mismatch", lambda: ch.hamming_distance(queries[:, :4], codes))
    record("negative_radius", lambda: ch.hamming_radius(queries, codes, -1))
    record("bad_dtype", lambda: ch.stochastic_binarize(logits.double()))
    record("bad_nbits", lambda: ch.unpack_bits(codes, 12))
    record("float8", lambda: ch.pack_bits(logits.to(torch.float8_e4m3fn)))
    return out
