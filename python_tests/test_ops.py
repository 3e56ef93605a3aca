"""The compiled ops against the pure-PyTorch reference (exactly), faiss-cpu, opcheck and their errors."""

import contextlib
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import cibhash_ext as ops
from cibhash_ext import _reference as ref
from conftest import DEVICES, clear_padding, needs_cuda, random_codes

WIDTHS = [8, 16, 24, 32, 64, 96, 128, 200, 256]
SIZES = [(0, 7), (7, 0), (1, 1), (1, 1000), (7, 1000), (1000, 7), (1000, 1000)]
INT_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
BINARIZE_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """Runs a test with 1 and with 2 intra-op threads (the two ways the CPU kernels split work)."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def codes_pair(q, n, nbits, seed, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    nbytes = (nbits + 7) // 8
    queries = clear_padding(random_codes(q, nbytes, gen), nbits)
    # Planted duplicates (and a query copied into the database) make equal distances certain.
    database = clear_padding(random_codes(n, nbytes, gen, duplicates=n // 4), nbits)
    if q and n:
        database[0] = queries[0]
    return queries.to(device), database.to(device)


# ----------------------------------------------------------------------------------------------
# pack_bits / unpack_bits
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES + INT_DTYPES)
@pytest.mark.parametrize("nbits", [1, 7, 8, 24, 64, 200])
def test_pack_bits_matches_reference(device, dtype, nbits):
    gen = torch.Generator().manual_seed(nbits)
    if dtype.is_floating_point:
        x = torch.randn(3, 5, nbits, generator=gen).to(dtype)
        x[0, 0, 0] = 0.0  # zero packs to 0
    elif dtype == torch.bool:
        x = torch.rand(3, 5, nbits, generator=gen) > 0.5
    else:
        low = 0 if dtype == torch.uint8 else -3
        x = torch.randint(low, 4, (3, 5, nbits), generator=gen).to(dtype)
    got = ops.pack_bits(x.to(device)).cpu()
    assert got.shape == (3, 5, (nbits + 7) // 8) and got.dtype == torch.uint8
    torch.testing.assert_close(got, ref.pack_bits(x), rtol=0, atol=0)
    torch.testing.assert_close(ops.unpack_bits(got.to(device), nbits).cpu(), (x > 0).to(torch.uint8), rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_pack_bits_agrees_on_01_pm1_and_logits(device):
    logits = torch.randn(50, 96, generator=torch.Generator().manual_seed(0), device="cpu").to(device)
    bits01 = (logits > 0).float()
    pm1 = bits01 * 2 - 1
    expected = ops.pack_bits(logits)
    assert torch.equal(ops.pack_bits(bits01), expected) and torch.equal(ops.pack_bits(pm1), expected)
    assert torch.equal(expected.cpu(), ref.pack_bits(logits.cpu()))


@pytest.mark.parametrize("device", DEVICES)
def test_pack_bits_nan_packs_to_zero_and_noncontiguous_works(device):
    x = torch.randn(40, 33, generator=torch.Generator().manual_seed(1)).to(device)
    x[:, 3] = float("nan")
    t = x.t()  # non-contiguous [33, 40]
    assert not t.is_contiguous()
    packed = ops.pack_bits(t)
    assert torch.equal(packed.cpu(), ref.pack_bits(t.cpu().contiguous()))
    assert torch.equal(ops.unpack_bits(ops.pack_bits(x), 33)[:, 3].cpu(), torch.zeros(40, dtype=torch.uint8))
    strided = ops.pack_bits(x)[:, :].t().contiguous().t()
    assert torch.equal(ops.unpack_bits(strided, 33).cpu(), (x.cpu() > 0).to(torch.uint8))


def test_pack_unpack_errors():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ops.pack_bits(torch.tensor(1.0))
    with pytest.raises(ValueError, match="at least 1 bit"):
        ops.pack_bits(torch.zeros(3, 0))
    with pytest.raises(TypeError, match="real, integer or bool tensor, got torch.complex64"):
        ops.pack_bits(torch.zeros(3, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="uint8"):
        ops.unpack_bits(torch.zeros(3, 4, dtype=torch.int32), 32)
    with pytest.raises(ValueError, match="need 2 bytes per code, but codes have 3"):
        ops.unpack_bits(torch.zeros(3, 3, dtype=torch.uint8), 16)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        ops.pack_bits([1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# stochastic_binarize
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", BINARIZE_DTYPES)
@pytest.mark.parametrize("shape", [(0, 4), (1,), (7, 3), (65, 64), (3, 5, 11)])
def test_binarize_forward_and_backward_match_reference(device, dtype, shape):
    gen = torch.Generator().manual_seed(math.prod(shape) + 1)
    z = (torch.randn(shape, generator=gen) * 3).to(dtype)
    for stochastic in (True, False):
        seed, offset = 0x1234567890ABC, 77
        got = torch.ops.cibhash_ext.stochastic_binarize_forward(z.to(device), stochastic, seed, offset).cpu()
        assert got.dtype == dtype and got.shape == z.shape
        assert torch.equal(got, ref.stochastic_binarize_forward(z, stochastic, seed, offset))
    grad = torch.randn(shape, generator=gen).to(dtype)
    got = torch.ops.cibhash_ext.stochastic_binarize_backward(grad.to(device), z.to(device)).cpu()
    assert torch.equal(got, ref.stochastic_binarize_backward(grad, z))


@pytest.mark.parametrize("device", DEVICES)
def test_binarize_gradient_is_straight_through(device):
    z = torch.randn(64, 64, generator=torch.Generator().manual_seed(2), device="cpu").to(device).requires_grad_()
    upstream = torch.randn(64, 64, generator=torch.Generator().manual_seed(3)).to(device)
    codes = ops.stochastic_binarize(z)
    codes.backward(upstream)
    p = torch.sigmoid(z.detach())
    torch.testing.assert_close(z.grad, upstream * p * (1 - p), rtol=1e-6, atol=1e-7)
    assert set(codes.unique().tolist()) == {0.0, 1.0}


@pytest.mark.parametrize("device", DEVICES)
def test_binarize_gradient_is_accurate_for_large_logits(device):
    # p (1 - p) is computed without the cancellation of 1 - p: under 8 float32 ulp of relative
    # error against float64 for every logit, even where p rounds to 1.
    z = torch.linspace(-60, 60, 100_001)
    upstream = torch.ones_like(z)
    got = torch.ops.cibhash_ext.stochastic_binarize_backward(upstream.to(device), z.to(device)).cpu().double()
    t = torch.exp(-z.double().abs())
    want = t / (1 + t) ** 2  # p (1 - p) in float64, itself free of the cancellation
    assert ((got - want).abs() / want).max().item() < 8 * 2.0**-24  # 1 - p computed directly: ~2e-3


@pytest.mark.parametrize("device", DEVICES)
def test_binarize_bits_have_mean_p(device):
    # Per logit value, 200k draws: the mean must be within 5 binomial standard deviations of p.
    logits = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.4, 2.0, 5.0])
    z = logits.repeat(200_000, 1).to(device)
    mean = ops.stochastic_binarize(z, generator=torch.Generator().manual_seed(5)).mean(0).cpu()
    p = torch.sigmoid(logits)
    bound = 5 * torch.sqrt(p * (1 - p) / 200_000)
    assert ((mean - p).abs() <= bound).all(), (mean, p)


@pytest.mark.parametrize("device", DEVICES)
def test_binarize_seed_reproducibility(device):
    z = torch.zeros(1000, 32, device=device)  # p = 0.5: every bit is a coin flip
    a = ops.stochastic_binarize(z, generator=torch.Generator().manual_seed(11))
    b = ops.stochastic_binarize(z, generator=torch.Generator().manual_seed(11))
    c = ops.stochastic_binarize(z, generator=torch.Generator().manual_seed(12))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.manual_seed(3)
    d = ops.stochastic_binarize(z)
    e = ops.stochastic_binarize(z)  # the default generator advanced: a new draw
    torch.manual_seed(3)
    assert torch.equal(d, ops.stochastic_binarize(z)) and not torch.equal(d, e)


def test_binarize_deterministic_mode_and_nan():
    z = torch.tensor([-1.0, 0.0, 1e-8, float("nan"), float("inf"), -float("inf")], requires_grad=True)
    assert ops.stochastic_binarize(z, stochastic=False).tolist() == [0, 0, 1, 0, 1, 0]
    nan_only = torch.full((10_000,), float("nan"))
    assert ops.stochastic_binarize(nan_only).sum() == 0  # NaN logits give bit 0
    codes = ops.stochastic_binarize(z)
    codes.sum().backward()
    assert torch.isnan(z.grad[3]) and z.grad[4] == 0 and z.grad[5] == 0


@needs_cuda
def test_binarize_cpu_and_cuda_give_the_same_bits():
    z = torch.randn(4097, 64, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(21)
    on_cpu = ops.stochastic_binarize(z)
    torch.manual_seed(21)
    on_cuda = ops.stochastic_binarize(z.cuda()).cpu()
    assert torch.equal(on_cpu, on_cuda)


def test_binarize_errors():
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        ops.stochastic_binarize(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
        ops.stochastic_binarize(torch.zeros(3, dtype=torch.int32))
    # The raw op checks too; the stable ABI can only raise RuntimeError from C++ (ops.py's checks
    # give the public functions their TypeError / ValueError).
    with pytest.raises(RuntimeError, match=r"stochastic_binarize_backward: expected grad_codes of shape \[4\], got \[3\]"):
        torch.ops.cibhash_ext.stochastic_binarize_backward(torch.zeros(3), torch.zeros(4))


# ----------------------------------------------------------------------------------------------
# Hamming search
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("nbits", WIDTHS)
@pytest.mark.parametrize("q,n", SIZES)
def test_hamming_ops_match_reference(device, nbits, q, n, threads):
    queries, database = codes_pair(q, n, nbits, seed=q + 7 * n + nbits, device=device)
    qc, dc = queries.cpu(), database.cpu()
    assert torch.equal(ops.hamming_distance(queries, database).cpu(), ref.hamming_distance(qc, dc))
    for k in sorted({1, 5, n}) if n else [3]:
        if n and k > n:
            continue
        d, i = ops.hamming_topk(queries, database, k)
        rd, ri = ref.hamming_topk(qc, dc, k)
        assert torch.equal(d.cpu(), rd.int()) and torch.equal(i.cpu(), ri)
    for radius in (0, nbits // 2 - 3, nbits):
        got = ops.hamming_radius(queries, database, max(radius, 0))
        want = ref.hamming_radius(qc, dc, max(radius, 0))
        for g, w in zip(got, want):
            assert torch.equal(g.cpu(), w.to(g.dtype))


@pytest.mark.parametrize("device", DEVICES)
def test_ties_really_occur_and_go_to_the_lower_index(device):
    queries, database = codes_pair(50, 1000, 16, seed=1, device=device)
    d, i = ops.hamming_topk(queries, database, 50)
    ties = d[:, 1:] == d[:, :-1]
    assert ties.sum() > 1000  # the planted case is full of equal distances
    assert (i[:, 1:][ties] > i[:, :-1][ties]).all()
    assert d[0, 0] == 0 and i[0, 0] == 0  # query 0 was copied into database row 0


@pytest.mark.parametrize("q", [1, 3, 100])
@pytest.mark.parametrize("nbits", [16, 32, 64, 128, 256, 40, 520])
def test_large_database_split_paths(q, nbits, threads):
    # Few queries split the database over threads and merge; many queries split the queries.
    queries, database = codes_pair(q, 20_000, nbits, seed=nbits + q)
    for k in (1, 10, 1000):
        d, i = ops.hamming_topk(queries, database, k)
        rd, ri = ref.hamming_topk(queries, database, k)
        assert torch.equal(d, rd.int()) and torch.equal(i, ri)
    radius = nbits // 2 - max(2, nbits // 16)
    for g, w in zip(ops.hamming_radius(queries, database, radius), ref.hamming_radius(queries, database, radius)):
        assert torch.equal(g, w.to(g.dtype))


@pytest.mark.parametrize("nbits", [8, 12, 16, 24, 32])
def test_narrow_codes_across_tiles_and_blocks(nbits, threads):
    # On AVX-512, codes of up to 32 bits scan in 32-bit lanes (16 per vector, tiles of 4096 codes,
    # 8 queries per block; a partial block in blocks of 4, 2 and 1). Sizes chosen to cross tiles,
    # end on a ragged group and leave partial query blocks; the many queries split by query, the
    # few by database.
    for q in (19, 7, 2):
        queries, database = codes_pair(q, 2 * 4096 + 13, nbits, seed=nbits + q)
        database[4096 + 3] = queries[-1]  # an exact match in the second tile
        for k in (1, 7, 300, len(database)):
            d, i = ops.hamming_topk(queries, database, k)
            rd, ri = ref.hamming_topk(queries, database, k)
            assert torch.equal(d, rd.int()) and torch.equal(i, ri), (q, k)
        assert d[-1, 0] == 0
        for radius in (0, nbits // 4, nbits // 2):
            got, want = ops.hamming_radius(queries, database, radius), ref.hamming_radius(queries, database, radius)
            for g, w in zip(got, want):
                assert torch.equal(g, w.to(g.dtype)), (q, radius)


@pytest.mark.parametrize("isa", ["scalar", "avx2"])
def test_every_cpu_popcount_path(isa):
    # The instruction set is chosen once per process; a child process runs the lowered paths of
    # the Hamming scan and of the binary layer.
    script = (
        "import torch, cibhash_ext as ops\n"
        "from cibhash_ext import _reference as ref\n"
        "g = torch.Generator().manual_seed(0)\n"
        "for nbytes in (1, 2, 3, 4, 8, 12, 16, 25, 32, 40):\n"
        "    q = torch.randint(0, 256, (37, nbytes), dtype=torch.uint8, generator=g)\n"
        "    db = torch.randint(0, 256, (3001, nbytes), dtype=torch.uint8, generator=g)\n"
        "    db[2000:] = db[:1001]\n"
        "    for k in (1, 17, 3001):\n"
        "        d, i = ops.hamming_topk(q, db, k); rd, ri = ref.hamming_topk(q, db, k)\n"
        "        assert torch.equal(d, rd.int()) and torch.equal(i, ri), (nbytes, k)\n"
        "    for a, b in zip(ops.hamming_radius(q, db, 4 * nbytes - 2), ref.hamming_radius(q, db, 4 * nbytes - 2)):\n"
        "        assert torch.equal(a, b.to(a.dtype)), nbytes\n"
        "    assert torch.equal(ops.hamming_distance(q, db), ref.hamming_distance(q, db))\n"
        "    allow = torch.randint(0, 256, (376,), dtype=torch.uint8, generator=g)\n"
        "    for k in (1, 17, 3001):\n"
        "        d, i = ops.hamming_topk_filtered(q, db, k, allow); rd, ri = ref.hamming_topk_filtered(q, db, k, allow)\n"
        "        assert torch.equal(d, rd.int()) and torch.equal(i, ri), (nbytes, k)\n"
        "    r = 4 * nbytes - 2\n"
        "    for a, b in zip(ops.hamming_radius_filtered(q, db, r, allow), ref.hamming_radius_filtered(q, db, r, allow)):\n"
        "        assert torch.equal(a, b.to(a.dtype)), nbytes\n"
        "z = torch.randn(300, 67, generator=g) * 4\n"
        "for dtype in (torch.float32, torch.float16, torch.bfloat16):\n"
        "    x = z.to(dtype)\n"
        "    got = torch.ops.cibhash_ext.stochastic_binarize_forward(x, True, 123, 456)\n"
        "    assert torch.equal(got, ref.stochastic_binarize_forward(x, True, 123, 456)), dtype\n"
        "    grad = torch.ops.cibhash_ext.stochastic_binarize_backward(x, x)\n"
        "    assert torch.equal(grad, ref.stochastic_binarize_backward(x, x)), dtype\n"
        "print('ok')\n"
    )
    env = dict(os.environ, CIBHASH_ISA=isa)
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("nbits", [16, 32, 64, 128, 256, 96])
def test_topk_and_radius_match_faiss(nbits):
    faiss = pytest.importorskip("faiss", reason="faiss-cpu is the oracle of this test; the test command installs it")
    queries, database = codes_pair(200, 5000, nbits, seed=nbits)
    index = faiss.IndexBinaryFlat(nbits)
    index.add(database.numpy())
    k = 100
    fd, fi = index.search(queries.numpy(), k)
    d, i = ops.hamming_topk(queries, database, k)
    np.testing.assert_array_equal(d.numpy(), fd)
    # faiss orders ties arbitrarily: the same sets strictly inside the k-th distance, and at the
    # k-th distance ours are the lowest indices among all database codes at that distance.
    full = ref.hamming_distance(queries, database).numpy()
    for row in range(len(queries)):
        kth = fd[row, -1]
        assert set(fi[row][fd[row] < kth]) == set(i[row].numpy()[d[row].numpy() < kth])
        at_kth = np.flatnonzero(full[row] == kth)
        np.testing.assert_array_equal(i[row].numpy()[d[row].numpy() == kth], at_kth[: (d[row].numpy() == kth).sum()])
    radius = nbits // 2 - max(2, nbits // 10)
    # faiss's binary range_search keeps distances < radius; ours keeps <= radius.
    flims, fdist, fidx = index.range_search(queries.numpy(), radius + 1)
    lims, rd, ri = ops.hamming_radius(queries, database, radius)
    np.testing.assert_array_equal(lims.numpy(), flims)
    assert lims[-1] > 0
    for row in range(len(queries)):
        a, b = flims[row], flims[row + 1]
        order = np.lexsort((fidx[a:b], fdist[a:b]))
        np.testing.assert_array_equal(rd[a:b].numpy(), fdist[a:b][order])
        np.testing.assert_array_equal(ri[a:b].numpy(), fidx[a:b][order])


@pytest.mark.parametrize("device", DEVICES)
def test_noncontiguous_codes(device):
    queries, database = codes_pair(33, 500, 128, seed=3, device=device)
    qn, dn = queries[::2], database.t().contiguous().t()
    assert not qn.is_contiguous() and not dn.is_contiguous()
    d, i = ops.hamming_topk(qn, dn, 10)
    rd, ri = ref.hamming_topk(qn.cpu(), dn.cpu(), 10)
    assert torch.equal(d.cpu(), rd.int()) and torch.equal(i.cpu(), ri)


def test_hamming_errors():
    q = torch.zeros(3, 8, dtype=torch.uint8)
    db = torch.zeros(10, 8, dtype=torch.uint8)
    with pytest.raises(TypeError, match="expected queries of dtype uint8"):
        ops.hamming_topk(q.float(), db, 1)
    with pytest.raises(TypeError, match="expected database of dtype uint8"):
        ops.hamming_distance(q, db.int())
    with pytest.raises(ValueError, match=r"expected queries of shape \[rows, bytes_per_code\], got a 1-d"):
        ops.hamming_topk(q[0], db, 1)
    with pytest.raises(ValueError, match="same code width, got 8 bytes and 4 bytes"):
        ops.hamming_radius(q, db[:, :4], 1)
    with pytest.raises(ValueError, match="at least 1 byte"):
        ops.hamming_distance(q[:, :0], db[:, :0])
    with pytest.raises(ValueError, match="expected k >= 1, got 0"):
        ops.hamming_topk(q, db, 0)
    with pytest.raises(ValueError, match="expected k <= database size 10, got k=11"):
        ops.hamming_topk(q, db, 11)
    with pytest.raises(ValueError, match="expected radius >= 0, got -1"):
        ops.hamming_radius(q, db, -1)
    # The compiled op's own RuntimeError (the stable ABI has no other type) is not shown beside it.
    with pytest.raises(ValueError) as caught:
        ops.hamming_topk(q, db, 11)
    assert caught.value.__cause__ is None and (caught.value.__context__ is None or caught.value.__suppress_context__)


def test_loose_scalar_arguments_are_refused():
    q = torch.zeros(3, 8, dtype=torch.uint8)
    db = torch.zeros(10, 8, dtype=torch.uint8)
    for bad, shown in [(2.9, "float 2.9"), ("3", "str '3'"), (True, "bool True"), (torch.tensor(3.0), "Tensor")]:
        with pytest.raises(TypeError, match=f"hamming_topk: k must be an int, got {shown}"):
            ops.hamming_topk(q, db, bad)
        with pytest.raises(TypeError, match=f"hamming_radius: radius must be an int, got {shown}"):
            ops.hamming_radius(q, db, bad)
    with pytest.raises(TypeError, match="unpack_bits: nbits must be an int, got float 15.7"):
        ops.unpack_bits(db[:, :2], 15.7)
    with pytest.raises(TypeError, match="generator must be a torch.Generator or None, got int 5"):
        ops.stochastic_binarize(torch.zeros(3, 4), generator=5)
    # numpy integers are integers.
    assert ops.hamming_topk(q, db, np.int64(3))[0].shape == (3, 3)
    assert ops.hamming_radius(q, db, np.int32(0))[0].tolist() == [0, 10, 20, 30]
    assert ops.unpack_bits(db[:, :2], np.uint8(16)).shape == (10, 16)


def test_public_ops_refuse_mixed_devices():
    q = torch.zeros(3, 8, dtype=torch.uint8)
    db = torch.zeros(10, 8, dtype=torch.uint8, device="meta")
    with pytest.raises(ValueError, match="hamming_distance: expected queries and database on the same device, got cpu and meta"):
        ops.hamming_distance(q, db)
    with pytest.raises(ValueError, match="hamming_topk: .*same device, got meta and cpu"):
        ops.hamming_topk(db, q, 1)
    with pytest.raises(ValueError, match="hamming_radius: .*same device, got cpu and meta"):
        ops.hamming_radius(q, db, 1)


def _fake_inputs(kind):
    """A context and a function that makes fake tensors: meta tensors, or FakeTensorMode's fake CPU tensors."""
    if kind == "meta":
        return contextlib.nullcontext(), lambda t: t.to("meta")
    mode = FakeTensorMode()
    return mode, mode.from_tensor


@pytest.mark.parametrize("kind", ["meta", "fake"])
def test_fake_kernels_check_like_the_real_ops(kind):
    lib = torch.ops.cibhash_ext
    context, fake = _fake_inputs(kind)
    real = {
        "q": torch.zeros(3, 8, dtype=torch.uint8), "db": torch.zeros(10, 8, dtype=torch.uint8),
        "q_float": torch.zeros(3, 8), "q_1d": torch.zeros(8, dtype=torch.uint8),
        "q_narrow": torch.zeros(3, 0, dtype=torch.uint8), "db_narrow": torch.zeros(10, 0, dtype=torch.uint8),
        "db_4": torch.zeros(10, 4, dtype=torch.uint8), "db_int": torch.zeros(10, 8, dtype=torch.int32),
        "scalar": torch.tensor(1.0), "no_bits": torch.zeros(3, 0), "complex": torch.zeros(3, 4, dtype=torch.complex64),
        "f64": torch.zeros(3, dtype=torch.float64), "f16": torch.zeros(3, dtype=torch.float16),
        "f3": torch.zeros(3), "f4": torch.zeros(4),
    }
    with context:
        t = {name: fake(value) for name, value in real.items()}
        q, db = t["q"], t["db"]
        d, i = lib.hamming_topk(q, db, 4)  # valid calls still give the right shapes and devices
        assert d.shape == (3, 4) and d.dtype == torch.int32 and i.dtype == torch.int64 and d.device == q.device
        assert lib.hamming_distance(q, db).shape == (3, 10)
        assert lib.unpack_bits(db, 60).shape == (10, 60)
        with pytest.raises(TypeError, match="expected queries of dtype uint8"):
            lib.hamming_topk(t["q_float"], db, 1)
        with pytest.raises(ValueError, match=r"expected queries of shape \[rows, bytes_per_code\], got a 1-d"):
            lib.hamming_distance(t["q_1d"], db)
        with pytest.raises(ValueError, match="same code width, got 8 bytes and 4 bytes"):
            lib.hamming_radius(q, t["db_4"], 1)
        with pytest.raises(ValueError, match="at least 1 byte"):
            lib.hamming_distance(t["q_narrow"], t["db_narrow"])
        with pytest.raises(ValueError, match="expected k >= 1, got 0"):
            lib.hamming_topk(q, db, 0)
        with pytest.raises(ValueError, match="expected k <= database size 10, got k=11"):
            lib.hamming_topk(q, db, 11)
        with pytest.raises(ValueError, match="expected radius >= 0, got -1"):
            lib.hamming_radius(q, db, -1)
        with pytest.raises(ValueError, match="64 bits need 8 bytes per code, but codes have 4"):
            lib.unpack_bits(t["db_4"], 64)
        with pytest.raises(ValueError, match="expected nbits >= 1, got 0"):
            lib.unpack_bits(db, 0)
        with pytest.raises(TypeError, match="expected codes of dtype uint8"):
            lib.unpack_bits(t["db_int"], 64)
        with pytest.raises(ValueError, match="at least 1 dimension"):
            lib.pack_bits(t["scalar"])
        with pytest.raises(ValueError, match="at least 1 bit"):
            lib.pack_bits(t["no_bits"])
        with pytest.raises(TypeError, match="real, integer or bool"):
            lib.pack_bits(t["complex"])
        with pytest.raises(TypeError, match="float32, float16 or bfloat16"):
            lib.stochastic_binarize_forward(t["f64"], True, 1, 2)
        with pytest.raises(ValueError, match="expected grad_codes of shape"):
            lib.stochastic_binarize_backward(t["f3"], t["f4"])
        with pytest.raises(TypeError, match="expected grad_codes of dtype"):
            lib.stochastic_binarize_backward(t["f16"], t["f3"])


def test_fake_kernels_refuse_mixed_devices():
    # The raw ops with a meta tensor on one side dispatch to the fake kernel, which returned a CPU
    # tensor of uninitialised memory before it checked the devices.
    lib = torch.ops.cibhash_ext
    q = torch.zeros(3, 8, dtype=torch.uint8)
    db = torch.zeros(10, 8, dtype=torch.uint8, device="meta")
    for call in (lambda: lib.hamming_distance(q, db), lambda: lib.hamming_topk(q, db, 2),
                 lambda: lib.hamming_radius(db, q, 2)):
        with pytest.raises(ValueError, match="same device"):
            call()
    with pytest.raises(ValueError, match="expected grad_codes on cpu, got meta"):
        lib.stochastic_binarize_backward(torch.zeros(3, device="meta"), torch.zeros(3))


@needs_cuda
def test_hamming_device_mismatch_error():
    q = torch.zeros(3, 8, dtype=torch.uint8)
    with pytest.raises(ValueError, match="same device"):
        ops.hamming_topk(q, q.cuda(), 1)


@pytest.mark.parametrize("device", DEVICES)
def test_empty_inputs_give_empty_results(device):
    q = torch.zeros(0, 8, dtype=torch.uint8, device=device)
    db = torch.zeros(5, 8, dtype=torch.uint8, device=device)
    d, i = ops.hamming_topk(q, db, 3)
    assert d.shape == (0, 3) and i.shape == (0, 3)
    d, i = ops.hamming_topk(db, q, 3)
    assert d.shape == (5, 0) and i.shape == (5, 0)
    lims, d, i = ops.hamming_radius(db, q, 4)
    assert lims.tolist() == [0] * 6 and d.numel() == 0 and i.numel() == 0
    lims, d, i = ops.hamming_radius(q, db, 4)
    assert lims.tolist() == [0] and d.numel() == 0
    assert ops.hamming_distance(q, db).shape == (0, 5)


# ----------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_every_op(device):
    opcheck = torch.library.opcheck
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(6, 20, generator=gen).to(device)
    codes = ops.pack_bits(x)
    db = torch.randint(0, 256, (50, 4), dtype=torch.uint8, generator=gen).to(device)
    q = db[:5].clone()
    lib = torch.ops.cibhash_ext
    opcheck(lib.pack_bits.default, (x,))
    opcheck(lib.unpack_bits.default, (codes, 20))
    opcheck(lib.stochastic_binarize_forward.default, (x.requires_grad_(), True, 5, 6))
    opcheck(lib.stochastic_binarize_backward.default, (torch.randn_like(x), x.detach()))
    opcheck(lib.hamming_distance.default, (q, db))
    opcheck(lib.hamming_topk.default, (q, db, 7))
    opcheck(lib.hamming_radius.default, (q, db, 12), test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    if device == "cpu":
        allow = torch.tensor([0b10110101] * 7, dtype=torch.uint8)
        dynamic = ("test_schema", "test_autograd_registration", "test_faketensor")
        opcheck(lib.hamming_topk_filtered.default, (q, db, 7, allow), test_utils=dynamic)
        opcheck(lib.hamming_radius_filtered.default, (q, db, 12, allow), test_utils=dynamic)


@pytest.mark.parametrize("nbytes", [1, 4, 8, 13, 16])
@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 1.0])
def test_filtered_ops_equal_the_reference_and_the_oracle(oracle, nbytes, density):
    gen = torch.Generator().manual_seed(nbytes)
    database = torch.randint(0, 256, (2003, nbytes), dtype=torch.uint8, generator=gen)
    database[1500:] = database[:503]  # ties
    queries = torch.cat([database[:5], torch.randint(0, 256, (40, nbytes), dtype=torch.uint8, generator=gen)])
    mask = torch.rand(2003, generator=gen) < density
    allow = ops.pack_bits(mask.reshape(1, -1)).reshape(-1)
    allowed = np.flatnonzero(mask.numpy())
    for k in (1, 10, 300):
        d, i = ops.hamming_topk_filtered(queries, database, k, allow)
        rd, ri = ref.hamming_topk_filtered(queries, database, k, allow)
        assert torch.equal(d, rd.int()) and torch.equal(i, ri)
        assert d.shape == (45, min(k, allowed.size))
        if allowed.size:
            od, op = oracle.topk(queries.numpy(), database.numpy()[allowed], min(k, allowed.size))
            np.testing.assert_array_equal(d.numpy(), od)
            np.testing.assert_array_equal(i.numpy(), allowed[op])
    radius = 4 * nbytes - 1
    lims, d, i = ops.hamming_radius_filtered(queries, database, radius, allow)
    for got, want in zip((lims, d, i), ref.hamming_radius_filtered(queries, database, radius, allow)):
        assert torch.equal(got, want.to(got.dtype))
    assert bool(mask[i].all())
    if 0 < density < 1:
        assert lims[-1] > 0


def test_filtered_ops_errors():
    q = torch.zeros(2, 4, dtype=torch.uint8)
    db = torch.zeros(20, 4, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"hamming_topk_filtered: expected allow of shape \[>= 3\]"):
        ops.hamming_topk_filtered(q, db, 3, torch.zeros(2, dtype=torch.uint8))
    with pytest.raises(TypeError, match="hamming_radius_filtered: expected allow of dtype uint8"):
        ops.hamming_radius_filtered(q, db, 3, torch.zeros(3, dtype=torch.int32))
    with pytest.raises(ValueError, match="hamming_topk_filtered: expected k >= 1, got 0"):
        ops.hamming_topk_filtered(q, db, 0, torch.zeros(3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="allow must be a torch.Tensor, got list"):
        ops.hamming_topk_filtered(q, db, 1, [1, 2, 3])


def test_torch_compile_traces_the_ops():
    def search(logits, database):
        return ops.hamming_topk(ops.pack_bits(logits), database, 4)

    logits = torch.randn(9, 64)
    database = torch.randint(0, 256, (300, 8), dtype=torch.uint8)
    compiled = torch.compile(search, fullgraph=True, backend="aot_eager")
    got, want = compiled(logits, database), search(logits, database)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("k", [128, 256, 700])
def test_topk_exact_when_the_sampled_bound_is_too_tight(k, threads):
    # From k = 64 the CPU kernel starts from a bound estimated on every 64th database code. Here
    # the sampled rows hold 120 exact copies of query 0 (the rest of them far away), so the bound
    # is distance 0; the other rows sit at distance 10. Fewer than k codes lie within the bound,
    # and the kernel must rescan to stay exact.
    stride = 64
    N, nbytes = stride * 400, 8
    gen = torch.Generator().manual_seed(k)
    queries = torch.randint(0, 256, (40, nbytes), dtype=torch.uint8, generator=gen)
    near = queries[0].clone()
    near[0] ^= 0xFF
    near[1] ^= 0x03  # 10 bits flipped
    database = near.repeat(N, 1)
    database[::stride] = ~queries[0]  # distance 64
    database[: stride * 120 : stride] = queries[0]
    d, i = ops.hamming_topk(queries, database, k)
    rd, ri = ref.hamming_topk(queries, database, k)
    assert (rd[0] == 0).sum() == 120 and (rd[0] == 10).sum() == k - 120
    assert torch.equal(d, rd.int()) and torch.equal(i, ri)


@pytest.mark.parametrize("device", DEVICES)
def test_matches_in_different_chunks_of_one_warp_get_their_own_slots(device):
    """The selection kernel's cursor hand-over (issue 11, fix 1): rows 0 and 37 are the first warp's
    only matches, in different 32-row chunks; with a masked sync both took slot 0 under CUDA's memory
    model. The emulation reproduces it under ThreadSanitizer (test_cuda_emulation.py)."""
    database = torch.full((300, 1), 0xFF, dtype=torch.uint8)
    database[[0, 37]] = 0
    query = torch.zeros(1, 1, dtype=torch.uint8)
    lims, dist, idx = ops.hamming_radius(query.to(device), database.to(device), 0)
    assert lims.tolist() == [0, 2] and dist.tolist() == [0, 0] and idx.tolist() == [0, 37]
    dist, idx = ops.hamming_topk(query.to(device), database.to(device), 2)
    assert dist.tolist() == [[0, 0]] and idx.tolist() == [[0, 37]]


@pytest.mark.parametrize("device", DEVICES)
def test_pack_bits_refuses_unsupported_dtypes_with_type_error(device):
    """float8 and the like: the same TypeError on CPU and CUDA (issue 11, fix 5)."""
    x = torch.ones(2, 8, device=device).to(torch.float8_e4m3fn)
    with pytest.raises(TypeError, match="pack_bits: expected a real, integer or bool tensor"):
        ops.pack_bits(x)


@needs_cuda
def test_cuda_select_width_limit_is_a_value_error():
    """hamming_topk / hamming_radius on CUDA take codes of up to 2^19 bytes (README, CUDA limits);
    wider ones raise ValueError, as a bad argument does on the CPU (issue 11, fixes 2 and 5)."""
    limit = 1 << 19
    db = torch.randint(0, 256, (3, limit), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    d, i = ops.hamming_topk(db[1:2].cuda(), db.cuda(), 2)
    rd, ri = ops.hamming_topk(db[1:2], db, 2)
    assert torch.equal(d.cpu(), rd) and torch.equal(i.cpu(), ri)
    wide = torch.zeros(2, limit + 1, dtype=torch.uint8, device="cuda")
    with pytest.raises(ValueError, match="at most 524288 bytes"):
        ops.hamming_topk(wide, wide, 1)
    with pytest.raises(ValueError, match="at most 524288 bytes"):
        ops.hamming_radius(wide, wide, 3)
