"""intsim.gemm.int_gemm: every backend equals the Python-integer matmul, bit for bit.

Specification (intsim/gemm.py): ``C[m, n] = sum_k A[m, k] * B[k, n]`` over the integers,
int8 (or uint8) operands, int32 result; refused (GQAError) unless ``K * max|a*b| < 2**31``;
``f32`` for any K (chunked so each float32 partial sum stays below ``2**24``); ``int_mm`` only
for 2-D int8 x int8.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_int as ref
from intsim import GQAError
from intsim.gemm import BACKENDS, Constant, check_gemm, f32_chunk, int_gemm, int_gemm_unsigned, is_exact

FAST = settings(max_examples=60, deadline=None)

DTYPES = (np.int8, np.uint8)


def mag(dt) -> int:
    info = np.iinfo(dt)
    return max(-int(info.min), int(info.max))


def allowed(a, b) -> list[str]:
    """Backends the specification allows for these operands (all must agree)."""
    out = ["auto", "f32", "f64", "numpy"]
    if a.ndim == 2 and b.ndim == 2 and a.dtype == b.dtype == np.int8 and INT_MM_EXACT:
        out.append("int_mm")
    return out


def _int_mm_is_exact_here() -> bool:
    """Independently of intsim: does torch._int_mm equal int64 matmul on saturating operands?

    With oneDNN limited to AVX2 (no VNNI) it sums u8*s8 pairs in saturating int16 and is not."""
    import torch

    rng = np.random.default_rng(1)
    a = rng.integers(-128, 128, (32, 128)).astype(np.int8)
    b = rng.integers(-128, 128, (128, 16)).astype(np.int8)
    a[:4], b[:, :4] = 127, 127
    got = torch._int_mm(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    return bool(np.array_equal(got.astype(np.int64), a.astype(np.int64) @ b.astype(np.int64)))


INT_MM_EXACT = _int_mm_is_exact_here()


def py_matmul(a, b) -> list:
    """Python-int matmul with numpy's broadcasting of leading dims (operands at most 3-D)."""
    if a.ndim == 2 and b.ndim == 2:
        return ref.matmul(a.tolist(), b.tolist(), b.shape[1])
    a3 = a if a.ndim == 3 else np.broadcast_to(a, (b.shape[0],) + a.shape)
    b3 = b if b.ndim == 3 else np.broadcast_to(b, (a.shape[0],) + b.shape)
    n = max(a3.shape[0], b3.shape[0])
    a3 = np.broadcast_to(a3, (n,) + a3.shape[1:])
    b3 = np.broadcast_to(b3, (n,) + b3.shape[1:])
    return [ref.matmul(x.tolist(), y.tolist(), y.shape[1]) for x, y in zip(a3, b3)]


def as_py(c) -> list:
    assert isinstance(c, np.ndarray) and c.dtype == np.int32, (type(c), getattr(c, "dtype", None))
    return c.tolist()


@st.composite
def operand(draw, shape, dtype):
    lo, hi = int(np.iinfo(dtype).min), int(np.iinfo(dtype).max)
    # mostly extremes and small values: the products that stress exactness and sign handling
    elem = st.one_of(st.sampled_from([lo, hi, 0, 1, -1 if lo < 0 else 2, lo + 1]), st.integers(lo, hi))
    n = int(np.prod(shape))
    return np.array(draw(st.lists(elem, min_size=n, max_size=n)), dtype=dtype).reshape(shape)


@st.composite
def gemm_case(draw, batched=False):
    da, db = draw(st.sampled_from(DTYPES)), draw(st.sampled_from(DTYPES))
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(0, 9)), draw(st.integers(1, 6))
    if not batched:
        return draw(operand((m, k), da)), draw(operand((k, n), db))
    bt = draw(st.integers(1, 3))
    form = draw(st.sampled_from(["3x3", "3x2", "2x3", "1x3"]))
    sa = {"3x3": (bt, m, k), "3x2": (bt, m, k), "2x3": (m, k), "1x3": (1, m, k)}[form]
    sb = {"3x3": (bt, k, n), "3x2": (k, n), "2x3": (bt, k, n), "1x3": (bt, k, n)}[form]
    return draw(operand(sa, da)), draw(operand(sb, db))


# --- equality with the Python-int matmul ------------------------------------------------------

@FAST
@given(gemm_case())
def test_2d_every_allowed_backend_equals_python_matmul(case):
    a, b = case
    expect = py_matmul(a, b)
    backends = allowed(a, b)
    if a.dtype == b.dtype == np.int8:
        assert ("int_mm" in backends) == INT_MM_EXACT
    for be in backends:
        c = int_gemm(a, b, be)
        assert c.shape == (a.shape[0], b.shape[1])
        assert as_py(c) == expect, be


@FAST
@given(gemm_case(batched=True))
def test_batched_operands_equal_python_matmul(case):
    a, b = case
    expect = py_matmul(a, b)
    for be in allowed(a, b):
        assert as_py(int_gemm(a, b, be)) == expect, be
    with pytest.raises(GQAError) as ei:
        int_gemm(a, b, "int_mm")
    assert ei.value.field == "backend"


@FAST
@given(st.integers(1, 4), st.integers(1, 40), st.integers(1, 4), st.sampled_from([-128, 127]),
       st.sampled_from([-128, 127]))
def test_constant_operands(m, k, n, va, vb):
    a = np.full((m, k), va, np.int8)
    b = np.full((k, n), vb, np.int8)
    for be in allowed(a, b):
        assert as_py(int_gemm(a, b, be)) == [[k * va * vb] * n] * m, be


def test_uint8_times_int8_extremes():
    """Softmax probabilities (uint8, up to 255) times V (int8): every sign and extreme."""
    a = np.array([[255, 0, 1, 128, 255, 255]], np.uint8)
    b = np.array([[-128, 127], [127, -128], [-1, 1], [-128, -128], [127, 127], [-128, 127]], np.int8)
    expect = ref.matmul(a.tolist(), b.tolist())
    assert expect == [[255 * -128 - 1 - 128 * 128 + 255 * 127 - 255 * 128,
                       255 * 127 + 1 - 128 * 128 + 255 * 127 + 255 * 127]]
    for be in ("auto", "f32", "f64", "numpy"):
        assert as_py(int_gemm(a, b, be)) == expect, be
    for be in ("auto", "f32", "f64", "numpy"):
        assert as_py(int_gemm(b.T.copy(), a.T.copy(), be)) == [list(r) for r in zip(*expect)], be


# --- the largest exact cases -------------------------------------------------------------------

@pytest.mark.parametrize("k", [1024, 1536, 4096])
def test_all_minus_128_is_k_times_2_14(k):
    a = np.full((3, k), -128, np.int8)
    b = np.full((k, 2), -128, np.int8)
    expect = k * 2**14
    for be in allowed(a, b):   # f32 included: K > 1024 is summed in exact chunks of <= 1024
        c = int_gemm(a, b, be)
        assert c.dtype == np.int32 and np.all(c == expect), be


def test_k1536_backends_bit_identical_to_numpy_int64():
    """The BERT FFN down-projection width: all -128, and random values with extremes mixed in."""
    rng = np.random.default_rng(7)
    k = 1536
    cases = [(np.full((64, k), -128, np.int8), np.full((k, 96), -128, np.int8))]
    a = rng.integers(-128, 128, (64, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, 96)).astype(np.int8)
    a[:8] = -128
    b[:, :8] = -128
    b[:, 8:16] = 127
    cases.append((a, b))
    for a, b in cases:
        expect = a.astype(np.int64) @ b.astype(np.int64)
        assert expect.max() <= 2**31 - 1
        for be in allowed(a, b):
            c = int_gemm(a, b, be)
            assert c.dtype == np.int32 and np.array_equal(c.astype(np.int64), expect), be
    # batched (attention-like) at the same K: auto must pick an exact backend
    a3 = np.stack([cases[1][0][:16], np.full((16, k), -128, np.int8)])
    b3 = np.stack([cases[1][1][:, :24], np.full((k, 24), -128, np.int8)])
    expect = a3.astype(np.int64) @ b3.astype(np.int64)
    for be in ("auto", "f32", "f64", "numpy"):
        assert np.array_equal(int_gemm(a3, b3, be).astype(np.int64), expect), be


def test_f32_chunk_boundary_for_uint8_times_int8():
    """bound = K * 255 * 128: K = 514 gives 16776960 <= 2**24 (one float32 pass); K = 515 and
    beyond are summed in chunks of <= 514, still exact (batched too)."""
    assert f32_chunk(np.uint8, np.int8) == 514 and f32_chunk(np.int8, np.int8) == 1024
    for k in (514, 515, 1028, 1029, 3000):
        a = np.full((2, k), 255, np.uint8)
        b = np.full((k, 3), -128, np.int8)
        assert np.all(int_gemm(a, b, "f32") == -255 * 128 * k)
        assert np.all(int_gemm(a, b, "auto") == -255 * 128 * k)
        assert np.all(int_gemm(a[None].repeat(2, 0), b, "f32") == -255 * 128 * k)


@FAST
@given(st.integers(1025, 3100), st.integers(0, 2**32 - 1))
def test_f32_chunked_equals_int64_for_any_k(k, seed):
    """Random K past one float32 chunk, extremes mixed in: chunked f32 equals int64 exactly."""
    rng = np.random.default_rng(seed)
    a = rng.choice(np.array([-128, 127, -127, 1, 0, 5], np.int8), (3, k))
    b = rng.choice(np.array([-128, 127, -1, 64, 0], np.int8), (k, 4))
    expect = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(int_gemm(a, b, "f32").astype(np.int64), expect)
    a3 = np.stack([a, -a.astype(np.int16).clip(-128, 127).astype(np.int8)])
    expect3 = a3.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(int_gemm(a3, b, "f32").astype(np.int64), expect3)


def test_f32_exact_at_its_bound_with_mixed_signs():
    """K = 1024 random int8 with many extremes: float32 BLAS equals int64 exactly."""
    rng = np.random.default_rng(3)
    a = rng.choice(np.array([-128, 127, -127, 1, 0], np.int8), (32, 1024))
    b = rng.choice(np.array([-128, 127, -1, 64], np.int8), (1024, 40))
    expect = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(int_gemm(a, b, "f32").astype(np.int64), expect)


def test_f32_chunks_by_k_whatever_the_row_count():
    """Two rows, K = 2049: 1100 products of 2**14 (a partial sum past 2**24) then 949 products of 1,
    an odd total no float32 holds. The chunking follows K, not the row count."""
    k, big = 2049, 1100
    a = np.ones((2, k), np.int8)
    a[:, :big] = -128
    b = np.ones((k, 3), np.int8)
    b[:big] = -128
    want = big * 2**14 + (k - big)
    assert want > 2**24 and want % 2 == 1
    assert int_gemm(a, b, "f32").tolist() == [[want] * 3] * 2
    assert int_gemm(a[None], b[None], "f32").tolist() == [[[want] * 3] * 2]


@FAST
@given(st.integers(515, 3100), st.integers(0, 127), st.integers(0, 2**32 - 1), st.booleans())
def test_f32_one_product_when_the_operands_own_bound_allows(k, top, seed, unsigned):
    """K past the dtype chunk but small activations (``max_i sum_k |a_ik| * max|b| <= 2**24``): one
    float32 product, still equal to int64 -- and two (chunked) once the bound is exceeded."""
    import torch

    rng = np.random.default_rng(seed)
    a = rng.integers(0 if unsigned else -top, top + 1, (3, k)).astype(np.uint8 if unsigned else np.int8)
    b = Constant(rng.integers(-128, 128, (k, 5)).astype(np.int8))
    expect = a.astype(np.int64) @ b.array.astype(np.int64)
    calls = []
    real = torch.matmul

    def counting(x, y):
        calls.append(x.shape)
        return real(x, y)

    torch.matmul = counting
    try:
        out = int_gemm(a, b, "f32")
    finally:
        torch.matmul = real
    assert np.array_equal(out.astype(np.int64), expect)
    one = int(np.abs(a.astype(np.int64)).sum(1).max()) * int(np.abs(b.array.astype(np.int64)).max()) <= 2**24
    assert len(calls) == (1 if one else -(-k // f32_chunk(a.dtype, np.int8)))


# --- K at the int32 limit ---------------------------------------------------------------------

def test_k_limit_int8():
    """K * 2**14 < 2**31: K = 131071 is the largest, its all -128 product 2**31 - 2**14 is exact."""
    k = 2**17 - 1
    a = np.full((1, k), -128, np.int8)
    b = np.full((k, 1), -128, np.int8)
    for be in allowed(a, b):
        assert int(int_gemm(a, b, be)[0, 0]) == k * 2**14 == 2**31 - 2**14, be
    a = np.full((1, k + 1), -128, np.int8)
    b = np.full((k + 1, 1), -128, np.int8)
    for be in BACKENDS:
        with pytest.raises(GQAError) as ei:
            int_gemm(a, b, be)
        assert ei.value.field == "K"
    for be in BACKENDS:       # batched: K is the last axis of a, whatever its other axes
        with pytest.raises(GQAError) as ei:
            int_gemm(a[None], b[None], be)
        assert ei.value.field == "K"
    assert check_gemm(np.zeros((2, 3, 5), np.int8), np.zeros((2, 5, 4), np.int8)) == 5 * 2**14


@pytest.mark.parametrize("da,db", [(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.uint8)])
def test_k_limit_unsigned(da, db):
    per = mag(da) * mag(db)
    k_max = (2**31 - 1) // per
    assert k_max * per < 2**31 <= (k_max + 1) * per
    a = np.full((1, k_max), np.iinfo(da).max if da == np.uint8 else -128, da)
    b = np.full((k_max, 1), np.iinfo(db).max if db == np.uint8 else -128, db)
    expect = k_max * int(a[0, 0]) * int(b[0, 0])
    assert int(int_gemm(a, b, "f64")[0, 0]) == expect
    assert int(int_gemm(a, b, "numpy")[0, 0]) == expect
    with pytest.raises(GQAError) as ei:
        int_gemm(np.zeros((1, k_max + 1), da), np.zeros((k_max + 1, 1), db))
    assert ei.value.field == "K"


# --- bad input --------------------------------------------------------------------------------

I8 = np.zeros((2, 3), np.int8)
I8B = np.zeros((3, 4), np.int8)


@pytest.mark.parametrize("a,b,field", [
    (np.zeros((2, 3), np.int16), I8B, "a"),
    (np.zeros((2, 3), np.int32), I8B, "a"),
    (np.zeros((2, 3), np.float32), I8B, "a"),
    (np.zeros((2, 3), np.bool_), I8B, "a"),
    (I8, np.zeros((3, 4), np.int64), "b"),
    (I8, np.zeros((3, 4), np.float64), "b"),
    ([[1, 2, 3], [4, 5, 6]], I8B, "a"),
    (I8, [[1] * 4] * 3, "b"),
    (I8, np.zeros((4, 4), np.int8), "b"),                 # K mismatch
    (np.zeros((3,), np.int8), I8B, "b"),                   # 1-D
    (I8, np.zeros((3,), np.int8), "b"),
    (np.zeros((2, 2, 3), np.int8), np.zeros((2, 4, 4), np.int8), "b"),
])
def test_bad_operands_raise_gqaerror(a, b, field):
    for be in BACKENDS:
        with pytest.raises(GQAError) as ei:
            int_gemm(a, b, be)
        assert ei.value.field == field, (be, str(ei.value))


def test_batch_dimension_mismatch_raises_gqaerror():
    """(2, M, K) @ (3, K, N) cannot broadcast: every backend raises GQAError (check_gemm checks the
    batch dimensions too, not only the last two, so no torch RuntimeError or numpy ValueError)."""
    a = np.zeros((2, 2, 3), np.int8)
    b = np.zeros((3, 3, 4), np.int8)
    for be in ("auto", "f32", "f64", "numpy"):
        with pytest.raises(GQAError):
            int_gemm(a, b, be)


def test_bad_backend_choices():
    with pytest.raises(GQAError) as ei:
        int_gemm(I8, I8B, "cuda")
    assert ei.value.field == "backend"
    with pytest.raises(GQAError) as ei:  # int_mm: an int8 right operand, 2-D only
        int_gemm(I8, np.zeros((3, 2), np.uint8), "int_mm")
    assert ei.value.field == "backend"
    with pytest.raises(GQAError) as ei:
        int_gemm(np.zeros((2, 2, 3), np.int8), np.zeros((2, 3, 2), np.int8), "int_mm")
    assert ei.value.field == "backend"


@pytest.mark.skipif(not is_exact("int_mm"), reason="torch._int_mm is not exact on this CPU (no VNNI)")
@pytest.mark.parametrize("k", [1, 255, 1536])
def test_int_mm_takes_a_uint8_left_operand_exactly(k):
    """uint8 a as a - 128 in int8, corrected by 128 * column sums: extremes of both signs, and a Constant b."""
    rng = np.random.default_rng(k)
    a = np.concatenate([np.full((1, k), 255, np.uint8), np.zeros((1, k), np.uint8),
                        rng.integers(0, 256, (6, k)).astype(np.uint8)])
    b = np.concatenate([np.full((k, 1), 127, np.int8), np.full((k, 1), -128, np.int8),
                        rng.integers(-128, 128, (k, 5)).astype(np.int8)], axis=1)
    expect = np.array(ref.matmul(a.tolist(), b.tolist()))
    assert np.array_equal(int_gemm(a, b, "int_mm"), expect)
    assert np.array_equal(int_gemm(a, Constant(b), "int_mm"), expect)


# --- memory layouts ---------------------------------------------------------------------------

def test_read_only_and_fortran_operands():
    rng = np.random.default_rng(5)
    a = rng.integers(-128, 128, (5, 7)).astype(np.int8)
    b = rng.integers(-128, 128, (7, 3)).astype(np.int8)
    expect = ref.matmul(a.tolist(), b.tolist())
    ra, rb = a.copy(), b.copy()
    ra.setflags(write=False)
    rb.setflags(write=False)
    fa, fb = np.asfortranarray(a), np.asfortranarray(b)
    for be in allowed(a, b):
        assert as_py(int_gemm(ra, rb, be)) == expect, be
        assert as_py(int_gemm(fa, fb, be)) == expect, be
        assert as_py(int_gemm(a[:, ::1], b[:, ::1], be)) == expect, be


def test_strided_views():
    """Views with steps: a[:, ::2] and b[::2]: the values of the view, whatever the strides."""
    rng = np.random.default_rng(6)
    a = rng.integers(-128, 128, (4, 10)).astype(np.int8)
    b = rng.integers(-128, 128, (10, 6)).astype(np.int8)
    av, bv = a[:, ::2], b[::2, ::3]
    expect = ref.matmul(av.tolist(), bv.tolist())
    for be in allowed(av, bv):
        assert as_py(int_gemm(av, bv, be)) == expect, be


def test_negative_stride_views():
    """``a[::-1]`` is an ordinary int8 array; every allowed backend multiplies it (torch.from_numpy
    refuses negative strides, so the torch backends must make the operand contiguous first)."""
    rng = np.random.default_rng(8)
    a = rng.integers(-128, 128, (4, 5)).astype(np.int8)
    b = rng.integers(0, 256, (5, 3)).astype(np.uint8)
    b8 = rng.integers(-128, 128, (5, 3)).astype(np.int8)
    for x, y in ((a[::-1], b8), (a[::-1], b), (a, b8[:, ::-1]), (a[None, ::-1], b8)):
        expect = py_matmul(x, y)
        for be in allowed(x, y):
            assert as_py(int_gemm(x, y, be)) == expect, be


def test_int_mm_is_refused_exactly_where_it_is_not_exact():
    """intsim's known-answer self-test agrees with the independent check above; an inexact
    int_mm is never used: explicitly it is refused with the field named, ``auto`` skips it."""
    from intsim import gemm

    assert gemm.is_exact("int_mm") == INT_MM_EXACT
    a = np.full((20, 64), 127, np.int8)
    if INT_MM_EXACT:
        assert np.all(int_gemm(a, a.T.copy(), "int_mm") == 64 * 127 * 127)
    else:
        with pytest.raises(GQAError) as ei:
            int_gemm(a, a.T.copy(), "int_mm")
        assert ei.value.field == "backend" and "not exact" in str(ei.value)
    assert np.all(int_gemm(a, a.T.copy(), "auto") == 64 * 127 * 127)


@FAST
@given(gemm_case())
def test_constant_right_operand_equals_python_matmul(case):
    """A Constant (weights: converted once, reused) gives the same integers on every backend."""
    from intsim.gemm import Constant

    a, b = case
    c = Constant(b)
    expect = py_matmul(a, b)
    for be in allowed(a, b):
        assert as_py(int_gemm(a, c, be)) == expect, be
        assert as_py(int_gemm(a, c, be)) == expect, be     # the cached conversions, second use


def test_constant_is_a_frozen_copy():
    from intsim.gemm import Constant

    b = np.arange(12, dtype=np.int8).reshape(3, 4)
    c = Constant(b)
    b[:] = 0                                 # the caller's array changes; the constant does not
    a = np.ones((2, 3), np.int8)
    assert as_py(int_gemm(a, c, "f32")) == ref.matmul(a.tolist(), np.arange(12).reshape(3, 4).tolist())
    with pytest.raises(ValueError):
        c.array[0, 0] = 1
    with pytest.raises(GQAError) as ei:
        Constant(np.zeros((2, 2), np.float32))
    assert ei.value.field == "constant"


@pytest.mark.parametrize("backend", ["f32", "f64"])
def test_float_out_hands_over_the_float_result(backend):
    """``float_out=True``: a float backend returns its float array (the same integers, exactly),
    skipping the int32 conversion; without it the result is int32."""
    rng = np.random.default_rng(3)
    a = rng.integers(-128, 128, (5, 40)).astype(np.int8)
    b = rng.integers(-128, 128, (40, 6)).astype(np.int8)
    exact = a.astype(np.int64) @ b.astype(np.int64)
    f = int_gemm(a, b, backend, float_out=True)
    i = int_gemm(a, b, backend)
    assert f.dtype == (np.float32 if backend == "f32" else np.float64) and i.dtype == np.int32
    assert np.array_equal(f.astype(np.int64), exact) and np.array_equal(i.astype(np.int64), exact)


def test_the_self_test_operands_are_adversarial():
    """What the known-answer self-test promises (``_adversarial_operands``' docstring): every pair
    of int8 extremes and the uint8 extremes against int8 ones, at a K where saturating int16 pair
    sums overflow; random operands over each dtype's full range, both ends included."""
    from intsim.gemm import _adversarial_operands

    cases = _adversarial_operands()
    const = {(a.dtype.name, int(a.flat[0]), int(b.flat[0])) for a, b in cases
             if a.min() == a.max() and b.min() == b.max()}
    assert {("int8", v, w) for v in (-128, 127) for w in (-128, 127)} <= const
    assert {("uint8", 255, 127), ("uint8", 255, -128), ("uint8", 0, -128)} <= const
    assert all(a.shape[-1] >= 256 for a, _ in cases)         # 128 pairs of 127 * 127 exceed 2**15 by far
    # alternating signs along K (the extremes' products cancel pairwise): 127, -128, 127, ... in a and b
    alt = [(a, b) for a, b in cases if a.dtype.name == "int8" and len(np.unique(a)) == 2]
    assert any(np.all(a[:, 0::2] == 127) and np.all(a[:, 1::2] == -128) and np.all(b[0::2] == 127)
               and np.all(b[1::2] == -128) for a, b in alt)
    rand = [(a, b) for a, b in cases if len(np.unique(a)) > 2]
    for dt, lo, hi in (("int8", -128, 127), ("uint8", 0, 255)):
        got = [(a, b) for a, b in rand if a.dtype.name == dt]
        assert got and all(a.min() == lo and a.max() == hi and b.min() == -128 and b.max() == 127 for a, b in got)


@FAST
@given(st.integers(1, 16), st.integers(1, 3), st.integers(1, 40), st.integers(1, 5), st.booleans(),
       st.integers(0, 2**31), st.sampled_from(["auto", "f32", "f64", "numpy"]))
def test_int_gemm_unsigned_equals_python_integers(bits, m, k, n, extreme, seed, backend):
    """A wider unsigned operand (softmax probabilities of ``prob_bits``) as two byte GEMMs: the
    integers of the Python matmul, for every width 1..16 and backend."""
    rng = np.random.default_rng(seed)
    top = (1 << bits) - 1
    a = (np.full((m, k), top) if extreme else rng.integers(0, top + 1, (m, k))).astype(np.uint16 if bits > 8 else np.uint8)
    b = (np.full((k, n), -128) if extreme else rng.integers(-128, 128, (k, n))).astype(np.int8)
    want = [[sum(int(a[i, j]) * int(b[j, c]) for j in range(k)) for c in range(n)] for i in range(m)]
    got = int_gemm_unsigned(a, b, bits, backend)
    assert got.dtype == np.int32 and got.tolist() == want


def test_int_gemm_unsigned_refuses_what_int32_cannot_hold():
    a = np.zeros((1, 257), np.uint16)
    int_gemm_unsigned(a[:, :256], np.zeros((256, 1), np.int8), 16)       # 256 * 65535 * 128 < 2**31
    for a_, b_, bits, field in ((a, np.zeros((257, 1), np.int8), 16, "K"),           # one term too many
                                (np.full((1, 2), 4096, np.uint16), np.zeros((2, 1), np.int8), 12, "a"),
                                (a.astype(np.int16), np.zeros((257, 1), np.int8), 12, "a"),
                                (a, np.zeros((257, 1), np.int8), 17, "bits")):
        with pytest.raises(GQAError) as ei:
            int_gemm_unsigned(a_, b_, bits)
        assert ei.value.field == field
