"""Every public op with the compiled library on fixed inputs: `save PATH` writes the results, `compare
PATH` checks that this torch gives the saved results to the bit (scripts/cross_version.sh runs it
under two torch versions). The inputs are python_tests/fallback_cases.py's, plus larger searches
that take the multi-threaded and SIMD paths."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python_tests"))

import fallback_cases  # noqa: E402

import cibhash_ext as ch  # noqa: E402
from cibhash_ext._extension import LOAD_ERROR  # noqa: E402


def results() -> dict:
    if LOAD_ERROR is not None:
        raise SystemExit(f"the compiled library did not load under torch {torch.__version__}: {LOAD_ERROR}")
    for op in ("pack_bits", "stochastic_binarize_forward", "hamming_topk", "hamming_radius", "hamming_topk_filtered",
               "mih_build", "mih_search", "mih_range_search"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"cibhash_ext::{op}", "CPU"):
            raise SystemExit(f"cibhash_ext::{op} has no compiled CPU kernel under torch {torch.__version__}")
    torch.set_num_threads(2)
    g = torch.Generator().manual_seed(0)
    out = fallback_cases.run(ch, fallback_cases.make_inputs(g))
    for nbytes in (2, 8, 32):
        codes = torch.randint(0, 256, (20000, nbytes), dtype=torch.uint8, generator=g)
        queries = codes[:300:3].clone()
        out[f"topk_{nbytes}"] = ch.hamming_topk(queries, codes, 300)
        out[f"radius_{nbytes}"] = ch.hamming_radius(queries, codes, 2 * nbytes)
        out[f"distance_{nbytes}"] = (ch.hamming_distance(queries[:7], codes),)
        allow = torch.randint(0, 256, ((len(codes) + 7) // 8,), dtype=torch.uint8, generator=g)
        out[f"topk_filtered_{nbytes}"] = ch.hamming_topk_filtered(queries, codes, 50, allow)
        out[f"radius_filtered_{nbytes}"] = ch.hamming_radius_filtered(queries, codes, 2 * nbytes, allow)
        # Multi-index hashing (mih_build / mih_search / mih_range_search) through its index.
        mih = ch.MIHIndex(8 * nbytes)
        mih.add(codes)
        out[f"mih_search_{nbytes}"] = mih.search(queries, 10)
        out[f"mih_range_{nbytes}"] = mih.range_search(queries, nbytes)
    logits = torch.randn(4096, 64, generator=g)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        z = logits.to(dtype).detach().requires_grad_()
        codes = ch.stochastic_binarize(z, generator=torch.Generator().manual_seed(5))
        (codes * 3).sum().backward()
        out[f"binarize_{dtype}"] = (codes.detach(), z.grad, ch.pack_bits(codes.detach()))
    return out


def main() -> None:
    mode, path = sys.argv[1:3]
    mine = results()
    if mode == "save":
        torch.save({"torch": str(torch.__version__), "results": mine}, path)
        print(f"saved {len(mine)} results under torch {torch.__version__}")
        return
    saved = torch.load(path)
    theirs = saved["results"]
    assert mine.keys() == theirs.keys(), sorted(set(mine) ^ set(theirs))
    differ = [
        name for name in mine
        if type(mine[name]) is not type(theirs[name]) or (
            mine[name] != theirs[name] if isinstance(mine[name], str)
            else not all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(mine[name], theirs[name], strict=True)))
    ]
    if differ:
        raise SystemExit(f"torch {torch.__version__} and {saved['torch']} differ on: {', '.join(differ)}")
    print(f"{len(mine)} results identical to the bit: torch {torch.__version__} and {saved['torch']}")


if __name__ == "__main__":
    main()
