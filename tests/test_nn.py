"""gqa_lut.nn: the torch PWL activation is intsim's PWL unit bit for bit; its gradients, scales,
model replacement, bad input, and the fine-tuning demo on a tiny budget."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import gqa_lut
import reference_int as ref
from gqa_lut.nn import (TORCH_FUNCTIONS, PWLActivation, export_scales, fit_input_scales, pwl_modules,
                        replace_activations, scale_exponent, set_scales, torch_function)
from intsim import FUNCTIONS, GQAError, PWLDatapath, PWLTable, SaturationCounter

REPO = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=150, deadline=None)
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread: on a loaded 2-core machine two OpenMP threads make small ops 50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tables():
    """8-entry dp tables (fast, deterministic) for the parity tests."""
    return {f: gqa_lut.search(f, entries=8, method="dp") for f in ("gelu", "silu", "exp")}


def with_datapath(table: PWLTable, **fields) -> PWLTable:
    """The same coefficients on a datapath with other output fields."""
    dp = PWLDatapath(**{**table.datapath.to_dict(), **fields})
    return PWLTable(function=table.function, domain=table.domain, datapath=dp, scales=table.scales,
                    breakpoints=table.breakpoints, slopes=table.slopes, intercepts=table.intercepts)


def assert_field(excinfo, field: str) -> None:
    assert excinfo.value.field == field, str(excinfo.value)
    assert str(excinfo.value).startswith(field + ":")


def every_code_parity(table: PWLTable, dtypes=DTYPES, **kw):
    """Every input code's real value at every scale: module output == intsim's, exactly."""
    dp = table.datapath
    q = dp.codes()
    for e in table.scales:
        unit = PWLActivation(table, exp=e, **kw)
        want = table.evaluate(q, e)
        counter = SaturationCounter()
        want_codes = table.output_codes(q, e, counter)
        assert torch.equal(unit.forward_codes(torch.from_numpy(q), e), torch.from_numpy(want_codes))
        for dtype in dtypes:
            x = torch.from_numpy(q * 2.0**-e).to(dtype)
            assert torch.equal(x.double(), torch.from_numpy(q * 2.0**-e))  # the codes' values are exact inputs
            y = unit(x)
            assert y.dtype == dtype
            assert torch.equal(y, torch.from_numpy(want).to(dtype)), (table.function, e, dtype)
            if dtype == torch.float64 or (dtype == torch.float32 and unit.exact_float32):
                assert np.array_equal(y.double().numpy(), want)  # no rounding at all: intsim's exact value
        assert int(unit.n_clipped) == 0
        assert int(unit.n_saturated) == len(dtypes) * counter.total


# --- parity ---------------------------------------------------------------------------------

@pytest.mark.parametrize("func", ["gelu", "silu", "exp"])
def test_parity_every_code_every_scale(tables, func):
    table = tables[func]
    assert table.scales == tuple(range(7))
    assert PWLActivation(table).exact_float32
    every_code_parity(table)


@pytest.mark.parametrize("func", ["gelu", "silu", "exp"])
@pytest.mark.parametrize("rounding", ref.MODES)
def test_parity_with_rounded_output(tables, func, rounding):
    # out_frac 4: a right shift with rounding and saturation at every scale; 14: a left shift at e < 8
    for out_bits, out_frac in ((8, 4), (10, 7), (16, 14)):
        every_code_parity(with_datapath(tables[func], out_bits=out_bits, out_frac=out_frac, out_rounding=rounding),
                          dtypes=(torch.float32, torch.float64))


def test_parity_searched_with_rounded_output():
    table = gqa_lut.search("gelu", entries=8, method="dp", out_bits=8, out_frac=5)
    every_code_parity(table)


@pytest.mark.parametrize("func", ["gelu", "silu", "exp"])
def test_parity_all_scale_forms(tables, func):
    """exp=e, scale=2**-e and a learned log2_scale at -e run the same unit."""
    table = tables[func]
    q = table.datapath.codes()
    for e in table.scales:
        x = torch.from_numpy(q * 2.0**-e).float()
        want = torch.from_numpy(table.evaluate(q, e)).float()
        for unit in (PWLActivation(table, scale=2.0**-e), PWLActivation(table, exp=e, learn=True, grad="pwl")):
            assert unit.exponent == e
            assert torch.equal(unit(x), want)


@FAST
@given(st.data())
def test_parity_random_floats(tables, data):
    """Random real inputs, ties included: module(x) == intsim's table(x, e) (intsim quantizes itself)."""
    table = tables[data.draw(st.sampled_from(("gelu", "silu", "exp")))]
    e = data.draw(st.sampled_from(table.scales))
    ties = st.integers(-300, 300).map(lambda k: (k + 0.5) * 2.0**-e)
    xs = data.draw(st.lists(st.one_of(st.floats(-1e6, 1e6, width=32), ties), min_size=1, max_size=64))
    x = torch.tensor(xs, dtype=torch.float32)
    unit = PWLActivation(table, exp=e, learn=data.draw(st.booleans()))
    want = table(x.double().numpy(), e)
    assert torch.equal(unit(x), torch.from_numpy(want).float())
    assert torch.equal(unit(x.double()), torch.from_numpy(want))
    r = np.rint(x.double().numpy() * 2.0**e)
    assert int(unit.n_clipped) == 2 * int(np.sum((r < table.datapath.code_min) | (r > table.datapath.code_max)))


@FAST
@given(st.data())
def test_parity_random_datapaths(data):
    """Random datapaths, tables and comparator constants (reference_int's strategies)."""
    kw = data.draw(ref.datapath_fields())
    e = data.draw(st.integers(ref.SCALE_MIN, ref.SCALE_MAX))
    bps, slopes, icpts = data.draw(ref.table_parts(kw))
    explicit = None
    if data.draw(st.booleans()):
        explicit = {e: data.draw(ref.comparator_codes(kw["in_bits"], len(bps)))}
    table = PWLTable(function="gelu", domain=(-1e9, 1e9), datapath=PWLDatapath(**kw), scales=[e],
                     breakpoints=[float(p) for p in bps], slopes=slopes, intercepts=icpts, explicit_codes=explicit)
    codes = np.array(data.draw(ref.input_codes(kw["in_bits"], table.breakpoint_codes(e))), dtype=np.int64)
    unit = PWLActivation(table, exp=e, grad="pwl")
    counter = SaturationCounter()
    want_codes = table.output_codes(codes, e, counter)
    assert torch.equal(unit.forward_codes(torch.from_numpy(codes), e), torch.from_numpy(want_codes))
    want = table.evaluate(codes, e)
    x = torch.from_numpy(codes * 2.0**-e)
    assert torch.equal(unit(x), torch.from_numpy(want))
    y32 = unit(x.float())
    assert torch.equal(y32, torch.from_numpy(want).float())
    if unit.exact_float32:
        assert np.array_equal(y32.double().numpy(), want)
    assert int(unit.n_saturated) == 2 * counter.total


def test_wide_datapath_float64_exact_float32_rounded_once(tables):
    """Accumulators beyond float32's 24 bits: float64 is exact, float32 is intsim's value rounded once."""
    g = tables["gelu"]
    dp = PWLDatapath(in_bits=16, slope_bits=16, slope_frac=14, icpt_bits=16, icpt_frac=14)
    table = PWLTable(function="gelu", domain=g.domain, datapath=dp, scales=[10], breakpoints=g.breakpoints,
                     slopes=g.slopes * 256 + 77, intercepts=g.intercepts * 256 - 33)
    unit = PWLActivation(table, exp=10)
    assert not unit.exact_float32
    q = dp.codes()
    want = table.evaluate(q, 10)
    x = torch.from_numpy(q * 2.0**-10)
    assert torch.equal(unit(x), torch.from_numpy(want))
    y32 = unit(x.float())
    assert torch.equal(y32, torch.from_numpy(want).float())
    assert not np.array_equal(y32.double().numpy(), want)  # float32 cannot hold them all


def test_nan_propagates_inf_clips(tables):
    table = tables["gelu"]
    unit = PWLActivation(table, exp=3)
    x = torch.tensor([math.nan, math.inf, -math.inf, 1.0])
    y = unit(x)
    want = table.evaluate(np.array([127, -128, 8]), 3)
    assert math.isnan(y[0]) and torch.equal(y[1:], torch.from_numpy(want).float())
    assert int(unit.n_clipped) == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("func", ["gelu", "silu", "exp"])
def test_parity_cuda(tables, func):
    table = tables[func]
    q = table.datapath.codes()
    for e in table.scales:
        unit = PWLActivation(table, exp=e, learn=True).cuda()
        x = torch.from_numpy(q * 2.0**-e).float().cuda().requires_grad_(True)
        y = unit(x)
        assert torch.equal(y.cpu(), torch.from_numpy(table.evaluate(q, e)).float())
        y.sum().backward()
        assert x.grad.is_cuda and unit.log2_scale.grad is not None


# --- gradients ------------------------------------------------------------------------------

def gelu_derivative(z: np.ndarray) -> np.ndarray:
    from scipy import special

    return 0.5 * (1.0 + special.erf(z / math.sqrt(2.0))) + z * np.exp(-z * z / 2.0) / math.sqrt(2.0 * math.pi)


def test_grad_function_is_ste_at_quantized_input(tables):
    table = tables["gelu"]
    e = 4
    x = torch.linspace(-10.0, 10.0, 4001, dtype=torch.float64).requires_grad_(True)
    PWLActivation(table, exp=e)(x).sum().backward()
    t = x.detach().numpy() * 2.0**e
    inside = (t >= -128) & (t <= 127)
    xhat = np.clip(np.rint(t), -128, 127) * 2.0**-e
    want = np.where(inside, gelu_derivative(xhat), 0.0)
    np.testing.assert_allclose(x.grad.numpy(), want, rtol=1e-12, atol=1e-15)
    assert np.all(x.grad.numpy()[~inside] == 0.0)


def test_grad_pwl_is_segment_slope(tables):
    table = tables["silu"]
    e = 5
    x = torch.linspace(-6.0, 6.0, 2001).requires_grad_(True)
    unit = PWLActivation(table, exp=e, grad="pwl")
    unit(x).sum().backward()
    t = x.detach().double().numpy() * 2.0**e
    q = np.clip(np.rint(t), -128, 127).astype(np.int64)
    seg = np.searchsorted(table.breakpoint_codes(e), q, side="right")
    want = np.where((t >= -128) & (t <= 127), table.slopes_real[seg], 0.0)
    assert np.array_equal(x.grad.double().numpy(), want)


def test_grad_learned_scale_is_lsq(tables):
    table = tables["gelu"]
    torch.manual_seed(0)
    x = (torch.randn(500, dtype=torch.float64) * 4).requires_grad_(True)
    gy = torch.randn(500, dtype=torch.float64)
    for grad, factor in (("pwl", None), ("function", 0.5)):
        unit = PWLActivation(table, exp=3, learn=True, grad=grad, scale_grad=factor)
        x.grad = None
        (unit(x) * gy).sum().backward()
        e, s = 3, 2.0**-3
        t = x.detach().numpy() / s
        q = np.clip(np.rint(t), -128, 127)
        inside = (t >= -128) & (t <= 127)
        if grad == "pwl":
            d = table.slopes_real[np.searchsorted(table.breakpoint_codes(e), q.astype(np.int64), side="right")]
        else:
            d = gelu_derivative(q * s)
        dq_ds = np.where(inside, q - t, q)
        f = factor if factor is not None else 1.0 / math.sqrt(500 * 127)
        want = np.sum(gy.numpy() * d * dq_ds) * s * math.log(2.0) * f
        assert float(unit.log2_scale.grad) == pytest.approx(want, rel=1e-5)


def test_learned_scale_rounds_to_table_scales(tables):
    unit = PWLActivation(tables["gelu"], exp=0, learn=True)
    for v, e in ((-2.4, 2), (-2.5, 3), (-2.6, 3), (-100.0, 6), (5.0, 0), (-6.49, 6)):
        with torch.no_grad():
            unit.log2_scale.fill_(v)
        assert unit.exponent == e
        unit(torch.zeros(3))
    odd = with_datapath(tables["gelu"])
    odd.scales = (0, 3, 6)
    unit = PWLActivation(odd, exp=3, learn=True)
    with torch.no_grad():
        unit.log2_scale.fill_(-4.4)
    assert unit.exponent == 3


def test_learned_scale_moves_the_right_way(tables):
    """Tiny inputs at a coarse initial scale: the LSQ gradient raises e until they resolve."""
    torch.manual_seed(0)
    unit = PWLActivation(tables["gelu"], exp=0, learn=True)
    opt = torch.optim.Adam([unit.log2_scale], lr=0.1)
    x = torch.randn(4096) * 0.05
    for _ in range(60):
        loss = ((unit(x) - nn.functional.gelu(x)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert unit.exponent >= 4


def test_first_batch_initialises_scale(tables):
    table = tables["gelu"]
    for learn in (False, True):
        unit = PWLActivation(table, learn=learn)
        assert unit.exponent is None and unit.scale is None
        unit(torch.tensor([-3.0, 1.0, 2.5]))   # absmax 3: 3 * 2**5 = 96 <= 127 < 192
        assert unit.exponent == 5 and unit.scale == 2.0**-5
        unit(torch.tensor([100.0]))            # later batches do not re-initialise
        assert unit.exponent == 5
    unit = PWLActivation(table)
    unit(torch.tensor([1000.0]))
    assert unit.exponent == 0
    unit = PWLActivation(table)
    unit(torch.zeros(4))
    assert unit.exponent == 6


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_torch_functions_match_intsim(name):
    fn = FUNCTIONS[name]
    x = np.linspace(*fn.domain, 1001)
    got = TORCH_FUNCTIONS[name](torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, fn(x), rtol=1e-12, atol=1e-14)
    assert torch_function("swish") is TORCH_FUNCTIONS["silu"]


# --- models ---------------------------------------------------------------------------------

class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.SiLU(), nn.Linear(8, 2))
        self.head = nn.ModuleList([nn.GELU()])

    def forward(self, x):
        return self.head[0](self.body(x))


def test_replace_fit_scales_export_roundtrip(tables):
    torch.manual_seed(0)
    model = Tiny()
    out = replace_activations(model, {nn.GELU: tables["gelu"], nn.SiLU: tables["silu"]}, learn=True)
    assert out is model
    assert list(pwl_modules(model)) == ["body.1", "body.3", "head.0"]
    assert pwl_modules(model)["body.3"].table is tables["silu"]
    with pytest.raises(GQAError) as ei:
        export_scales(model)
    assert_field(ei, "body.1")
    x = torch.randn(64, 4)
    with fit_input_scales(model) as units:
        float_out = model(x)
        assert set(units) == {"body.1", "body.3", "head.0"}
    scales = export_scales(model)
    assert set(scales) == {"body.1", "body.3", "head.0"} and all(e in range(7) for e in scales.values())
    y = model(x)
    assert y.shape == float_out.shape and not torch.equal(y, float_out)
    # state_dict carries the learned exponents; set_scales is export_scales' inverse
    copy = replace_activations(Tiny(), {nn.GELU: tables["gelu"], nn.SiLU: tables["silu"]}, learn=True)
    copy.load_state_dict(model.state_dict())
    assert export_scales(copy) == scales and torch.equal(copy(x), y)
    set_scales(copy, {"head.0": 1})
    assert export_scales(copy)["head.0"] == 1
    fixed = replace_activations(Tiny(), {nn.GELU: tables["gelu"]}, exp=2)
    assert export_scales(fixed) == {"body.1": 2, "head.0": 2}
    assert isinstance(replace_activations(nn.GELU(), {nn.GELU: tables["gelu"]}, exp=1), PWLActivation)


def test_replace_minilm(tables):
    from intsim.bert import Tokenizer, load_model

    teacher = load_model()
    model = replace_activations(load_model(), {nn.GELU: tables["gelu"], nn.SiLU: tables["silu"]})
    assert list(pwl_modules(model)) == [f"blocks.{i}.gelu" for i in range(6)]
    assert not any(isinstance(m, nn.GELU) for m in model.modules())
    tok = Tokenizer()
    sents = ["A man is playing a guitar.", "The stock market fell sharply on Monday.", "Cats sleep a lot."]
    ids, mask = (torch.from_numpy(a) for a in tok(sents))
    with fit_input_scales(model):
        model(ids, mask)
    scales = export_scales(model)
    assert list(scales) == [f"blocks.{i}.gelu" for i in range(6)] and all(0 <= e <= 6 for e in scales.values())
    seen = {}
    model.blocks[0].gelu.register_forward_hook(lambda m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        emb, want = model(ids, mask), teacher(ids, mask)
    cos = (emb * want).sum(-1)
    assert torch.all(cos > 0.98), cos
    # inside the model, the unit is still intsim's: quantize the captured input the same way
    e = scales["blocks.0.gelu"]
    x = seen["x"].double().numpy()
    assert np.array_equal(seen["y"].double().numpy(), tables["gelu"](x, e))


# --- bad input ------------------------------------------------------------------------------

def test_bad_scales(tables):
    table = tables["gelu"]
    cases = [(dict(exp=7), "exp"), (dict(exp=-1), "exp"), (dict(exp=2.0), "exp"), (dict(exp=True), "exp"),
             (dict(scale=0.3), "scale"), (dict(scale=3.0), "scale"), (dict(scale=-0.25), "scale"),
             (dict(scale=math.nan), "scale"), (dict(scale=0.0), "scale"), (dict(scale=2.0**-9), "scale"),
             (dict(scale="0.25"), "scale"), (dict(exp=2, scale=0.25), "scale"), (dict(grad="float"), "grad"),
             (dict(scale_grad=math.inf), "scale_grad"), (dict(function=3), "function")]
    for kw, field in cases:
        with pytest.raises(GQAError) as ei:
            PWLActivation(table, **kw)
        assert_field(ei, field)
    with pytest.raises(GQAError, match=r"0\.3 is not a power of two.*2\.0\*\*-2"):
        scale_exponent(0.3)
    assert scale_exponent(0.25) == 2 and scale_exponent(4) == -2
    unit = PWLActivation(table, exp=2)
    with pytest.raises(GQAError) as ei:
        unit.set_exponent(9)
    assert_field(ei, "exp")
    with pytest.raises(GQAError) as ei:
        unit.forward_codes(torch.tensor([1, 2]), 8)
    assert_field(ei, "e")


def test_bad_table_and_inputs(tables):
    with pytest.raises(GQAError) as ei:
        PWLActivation("gelu")
    assert_field(ei, "table")
    # a 72-bit accumulator: int64 cannot hold it
    dp = PWLDatapath(slope_frac=-24, icpt_frac=48, slope_bits=24)
    wide = PWLTable(function="gelu", domain=(-4, 4), datapath=dp, scales=[0], breakpoints=[0.0], slopes=[1, 2],
                    intercepts=[0, 0])
    with pytest.raises(GQAError) as ei:
        PWLActivation(wide)
    assert_field(ei, "table.datapath")
    assert "int64" in str(ei.value)
    g = tables["gelu"]
    custom = PWLTable(function="mystery", domain=g.domain, datapath=g.datapath, scales=g.scales,
                      breakpoints=g.breakpoints, slopes=g.slopes, intercepts=g.intercepts)
    with pytest.raises(GQAError) as ei:
        PWLActivation(custom)
    assert_field(ei, "function")
    assert PWLActivation(custom, grad="pwl", exp=1)(torch.ones(2)).shape == (2,)
    assert PWLActivation(custom, function=torch.sin, exp=1)(torch.ones(2)).shape == (2,)
    unit = PWLActivation(g, exp=3)
    for bad in (torch.tensor([1, 2]), np.ones(3)):
        with pytest.raises(GQAError) as ei:
            unit(bad)
        assert_field(ei, "input")
    for bad in (torch.tensor([128]), torch.tensor([-129])):
        with pytest.raises(GQAError) as ei:
            unit.forward_codes(bad, 3)
        assert_field(ei, "codes")
    with pytest.raises(GQAError) as ei:
        unit.forward_codes(torch.tensor([1.0]), 3)
    assert_field(ei, "codes")


def test_bad_replacement(tables):
    with pytest.raises(GQAError) as ei:
        replace_activations(Tiny(), {nn.GELU: tables["exp"]})
    assert_field(ei, "mapping[GELU]")
    with pytest.raises(GQAError) as ei:
        replace_activations(Tiny(), {nn.ReLU: tables["gelu"]})
    assert_field(ei, "mapping")
    with pytest.raises(GQAError) as ei:
        replace_activations(Tiny(), {nn.GELU: "gelu8.json"})
    assert_field(ei, "mapping[GELU]")
    with pytest.raises(GQAError) as ei:
        replace_activations(Tiny(), {"GELU": tables["gelu"]})
    assert_field(ei, "mapping")
    with pytest.raises(GQAError) as ei:
        replace_activations(Tiny(), {})
    assert_field(ei, "mapping")
    with pytest.raises(GQAError) as ei:
        export_scales(Tiny())
    assert_field(ei, "model")
    with pytest.raises(GQAError) as ei:
        with fit_input_scales(Tiny()):
            pass
    assert_field(ei, "model")
    model = replace_activations(Tiny(), {nn.GELU: tables["gelu"]}, exp=1)
    with pytest.raises(GQAError) as ei:
        set_scales(model, {"body.3": 2})
    assert_field(ei, "scales['body.3']")


# --- the fine-tuning demo, tiny budget --------------------------------------------------------

def load_demo():
    bench = REPO / "benchmarks"
    sys.path.insert(0, str(bench))
    spec = importlib.util.spec_from_file_location("bench_finetune", bench / "bench_finetune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_finetune_demo_tiny_budget(tmp_path, capsys):
    demo = load_demo()
    assert len(set(demo.sentences(512))) == 512
    args = ["--steps", "8", "--batch", "8", "--train", "8", "--eval", "8", "--calib", "8", "--method", "dp",
            "--lr", "1e-5", "--seed", "0", "--threads", "1", "--out", str(tmp_path)]
    res = demo.main(args)
    losses = res["losses"]
    assert len(losses) == 8 and all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
    assert 0.9 < res["cos_before"] <= 1.0 and 0.9 < res["cos_after"] <= 1.0
    assert Path(res["plot"]).is_file()
    text = capsys.readouterr().out
    assert "cosine to FP32 before" in text and "cosine to FP32 after" in text
