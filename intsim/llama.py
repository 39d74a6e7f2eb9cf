"""The FP32 reference decoder: a Llama model (SmolLM2-135M-Instruct) read from a GGUF file.

Read top to bottom like nanoGPT's model.py. Names follow the Llama paper and Meta's reference
code (``tok_embeddings``, ``attention.wq``, ``feed_forward.w1``, ``attention_norm``, ...), which
map one to one onto the GGUF tensor names (``token_embd``, ``attn_q``, ``ffn_gate``, ``attn_norm``).
Weights come from :mod:`intsim.gguf_model` (dequantized to FP32 once per process); the integer
decoder is built from this model's weights and calibrated on its activations.

The computation, for token ids ``t_0 .. t_{T-1}`` at positions ``p``::

    h = E[t]                                                     token embedding, (T, dim)
    for each layer:
        n = RMSNorm(h) * g_attn
        q, k, v = RoPE(W_q n), RoPE(W_k n), W_v n                 9 query heads, 3 KV heads, 64 dims
        h = h + W_o concat_heads(softmax(q k^T / sqrt(64) + causal) v)
        m = RMSNorm(h) * g_ffn
        h = h + W_2 (SiLU(W_1 m) * W_3 m)                         SwiGLU
    logits = W_out (RMSNorm(h) * g)                              W_out = E when the file has no output.weight

- ``RMSNorm(x) = x / sqrt(mean(x**2) + eps)`` over the hidden dimension, in FP32.
- RoPE, as Meta's code and llama.cpp (the GGUF stores Q and K rows in that layout): in each head
  the pair of dimensions ``(2i, 2i+1)`` is rotated by the angle ``p * base**(-2i / head_dim)``.
  Hugging Face rotates dimensions ``(i, i + head_dim/2)`` instead, with Q and K rows permuted to
  match (``gguf_model.hf_qk_rows``); the scores ``q . k`` are the same.
- Grouped-query attention: query head ``h`` reads KV head ``h // (n_heads / n_kv_heads)``.
- Causal: the query at position ``p`` sees keys at positions ``<= p``. With a :class:`KVCache`
  the keys and values of earlier positions are kept, so a step computes only the new tokens.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .errors import GQAError
from .gguf_model import GGUFModel, open_gguf


@dataclass(frozen=True)
class LlamaConfig:
    vocab_size: int = 49152
    dim: int = 576               # hidden size
    n_layers: int = 30
    n_heads: int = 9             # query heads
    n_kv_heads: int = 3          # key/value heads, each shared by n_heads / n_kv_heads query heads
    head_dim: int = 64
    ffn_dim: int = 1536          # SwiGLU hidden size
    rope_base: float = 100000.0
    norm_eps: float = 1e-5
    max_seq_len: int = 8192      # the context the model was trained for
    tie_embeddings: bool = True  # the output layer is the token embedding

    @property
    def n_rep(self) -> int:
        return self.n_heads // self.n_kv_heads

    @classmethod
    def from_gguf(cls, g: GGUFModel) -> "LlamaConfig":
        arch = g.meta("general.architecture")
        if arch != "llama":
            raise GQAError("general.architecture", f"is {arch!r}; only 'llama' decoders are supported",
                           "use a llama-architecture GGUF file")
        a = "llama."
        n_heads, n_kv = int(g.meta(a + "attention.head_count")), int(g.meta(a + "attention.head_count_kv"))
        dim = int(g.meta(a + "embedding_length"))
        head_dim = int(g.meta(a + "attention.key_length")) if g.has(a + "attention.key_length") else dim // n_heads
        rope_dims = int(g.meta(a + "rope.dimension_count")) if g.has(a + "rope.dimension_count") else head_dim
        if rope_dims != head_dim:
            raise GQAError("llama.rope.dimension_count", f"is {rope_dims}, the head dimension {head_dim}",
                           "partial rotary embeddings are not supported")
        if n_heads % n_kv:
            raise GQAError("llama.attention.head_count_kv", f"{n_kv} does not divide the {n_heads} query heads",
                           "use a GGUF with grouped-query attention of whole groups")
        vocab = (int(g.meta(a + "vocab_size")) if g.has(a + "vocab_size")
                 else len(g.meta("tokenizer.ggml.tokens")))
        return cls(vocab_size=vocab, dim=dim, n_layers=int(g.meta(a + "block_count")), n_heads=n_heads,
                   n_kv_heads=n_kv, head_dim=head_dim, ffn_dim=int(g.meta(a + "feed_forward_length")),
                   rope_base=float(g.meta(a + "rope.freq_base")),
                   norm_eps=float(g.meta(a + "attention.layer_norm_rms_epsilon")),
                   max_seq_len=int(g.meta(a + "context_length")),
                   tie_embeddings="output.weight" not in g.tensor_names)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def rope_angles(c: LlamaConfig, positions: torch.Tensor):
    """cos and sin of ``p * base**(-2i / head_dim)``, each (T, head_dim/2), in FP32."""
    inv_freq = 1.0 / (c.rope_base ** (torch.arange(0, c.head_dim, 2, dtype=torch.int64).float() / c.head_dim))
    angles = positions.float()[:, None] * inv_freq[None, :]          # (T, head_dim/2)
    return angles.cos(), angles.sin()


def apply_rope(x, cos, sin):
    """Rotate each adjacent pair (2i, 2i+1) of the last dimension: x (B, heads, T, head_dim)."""
    B, H, T, D = x.shape
    pairs = x.view(B, H, T, D // 2, 2)                               # (B, H, T, D/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]                            # (B, H, T, D/2) each
    out = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)  # (B, H, T, D/2, 2)
    return out.view(B, H, T, D)


class Rotary(nn.Module):
    """:func:`apply_rope` as a module, so calibration hooks see q and k after RoPE (the KV cache's keys)."""

    def forward(self, x, cos, sin):
        return apply_rope(x, cos, sin)


class KVCache:
    """Keys (after RoPE) and values of every position decoded so far, per layer: (B, n_kv_heads, S, head_dim)."""

    def __init__(self, n_layers: int):
        self.k: list[torch.Tensor | None] = [None] * n_layers
        self.v: list[torch.Tensor | None] = [None] * n_layers

    @property
    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def update(self, layer: int, k, v):
        """Append this step's k, v (B, n_kv_heads, T, head_dim); return all of them (B, n_kv_heads, S, head_dim)."""
        if self.k[layer] is not None:
            k = torch.cat((self.k[layer], k), dim=2)
            v = torch.cat((self.v[layer], v), dim=2)
        self.k[layer], self.v[layer] = k, v
        return k, v


def causal_mask(T: int, S: int):
    """(T, S) additive mask: the T new queries are positions S-T .. S-1; key j is visible to query i iff j <= S-T+i."""
    visible = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    return torch.zeros(T, S).masked_fill(~visible, float("-inf"))


class Attention(nn.Module):
    """Grouped-query self-attention with rotary position embeddings."""

    def __init__(self, c: LlamaConfig, layer: int):
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, c.n_heads, c.n_kv_heads, c.head_dim
        self.wq = nn.Linear(c.dim, c.n_heads * c.head_dim, bias=False)
        self.wk = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.wv = nn.Linear(c.dim, c.n_kv_heads * c.head_dim, bias=False)
        self.wo = nn.Linear(c.n_heads * c.head_dim, c.dim, bias=False)
        self.q_rope, self.k_rope = Rotary(), Rotary()
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, cos, sin, mask, cache: KVCache | None):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)     # (B, n_heads, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv_heads, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, n_kv_heads, T, hd)
        q, k = self.q_rope(q, cos, sin), self.k_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)                                  # (B, n_kv_heads, S, hd)
        rep = self.n_heads // self.n_kv_heads
        k = k.repeat_interleave(rep, dim=1)                                        # (B, n_heads, S, hd)
        v = v.repeat_interleave(rep, dim=1)                                        # (B, n_heads, S, hd)
        att = self.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + mask)  # (B, n_heads, T, S)
        y = (att @ v).transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, n_heads * hd)
        return self.wo(y)


class FeedForward(nn.Module):
    """SwiGLU: w2(SiLU(w1 x) * w3 x)."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(c.dim, c.ffn_dim, bias=False)   # gate
        self.w3 = nn.Linear(c.dim, c.ffn_dim, bias=False)   # up
        self.w2 = nn.Linear(c.ffn_dim, c.dim, bias=False)   # down
        self.silu = nn.SiLU()

    def forward(self, x):
        return self.w2(self.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    """One pre-norm decoder layer: h = h + attn(norm(h)); h = h + ffn(norm(h))."""

    def __init__(self, c: LlamaConfig, layer: int):
        super().__init__()
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.attention = Attention(c, layer)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.feed_forward = FeedForward(c)

    def forward(self, h, cos, sin, mask, cache):
        h = h + self.attention(self.attention_norm(h), cos, sin, mask, cache)
        return h + self.feed_forward(self.ffn_norm(h))


class Llama(nn.Module):
    """Token ids (B, T) in, next-token logits (B, T, vocab) out; with a cache, T new tokens after the cached ones."""

    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.config = c
        self.tok_embeddings = nn.Embedding(c.vocab_size, c.dim)
        self.layers = nn.ModuleList(Block(c, i) for i in range(c.n_layers))
        self.norm = RMSNorm(c.dim, c.norm_eps)
        self.output = None if c.tie_embeddings else nn.Linear(c.dim, c.vocab_size, bias=False)

    def forward(self, ids, cache: KVCache | None = None):
        c = self.config
        B, T = ids.shape
        start = cache.length if cache is not None else 0
        if start + T > c.max_seq_len:
            raise GQAError("ids", f"{start + T} positions exceed the model's context of {c.max_seq_len}",
                           f"use at most {c.max_seq_len} tokens")
        cos, sin = rope_angles(c, torch.arange(start, start + T))          # (T, hd/2) each
        mask = causal_mask(T, start + T)                                   # (T, S)
        h = self.tok_embeddings(ids)                                       # (B, T, dim)
        for layer in self.layers:
            h = layer(h, cos, sin, mask, cache)
        h = self.norm(h)
        w_out = self.tok_embeddings.weight if self.output is None else self.output.weight
        return F.linear(h, w_out)                                          # (B, T, vocab)


def check_generation(prompt_ids, max_new_tokens: int, max_seq_len: int) -> list[int]:
    """A generation request's prompt as a list of ids, or the GQAError naming what is wrong."""
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise GQAError("prompt", "is empty", "give a prompt of at least one token")
    if max_new_tokens < 0:
        raise GQAError("max_new_tokens", f"is {max_new_tokens}", "give 0 or more")
    if len(ids) + max_new_tokens > max_seq_len:
        raise GQAError("prompt", f"{len(ids)} tokens + {max_new_tokens} new exceed the context of "
                       f"{max_seq_len}", "shorten the prompt or ask for fewer new tokens")
    return ids


@torch.inference_mode()
def generate(model: Llama, prompt_ids, max_new_tokens: int, eos_id: int | None = None) -> list[int]:
    """Greedy decoding with a KV cache: the new token ids (stops after ``eos_id`` if given)."""
    ids = check_generation(prompt_ids, max_new_tokens, model.config.max_seq_len)
    cache = KVCache(model.config.n_layers)
    logits = model(torch.tensor([ids]), cache)                            # prefill: (1, T, vocab)
    new: list[int] = []
    for _ in range(max_new_tokens):
        nxt = int(logits[0, -1].argmax())
        new.append(nxt)
        if nxt == eos_id:
            break
        logits = model(torch.tensor([[nxt]]), cache)                      # one step: (1, 1, vocab)
    return new


# --- loading --------------------------------------------------------------------------------------

def gguf_name(name: str) -> str:
    """The GGUF tensor name of one of our parameters."""
    top = {"tok_embeddings.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
           "output.weight": "output.weight"}
    if name in top:
        return top[name]
    _, i, rest = name.split(".", 2)               # layers.{i}.{module}.weight
    block = {"attention_norm": "attn_norm", "attention.wq": "attn_q", "attention.wk": "attn_k",
             "attention.wv": "attn_v", "attention.wo": "attn_output", "ffn_norm": "ffn_norm",
             "feed_forward.w1": "ffn_gate", "feed_forward.w3": "ffn_up", "feed_forward.w2": "ffn_down"}
    return f"blk.{i}.{block[rest.rsplit('.', 1)[0]]}.weight"


def load_model(path=None) -> Llama:
    """The FP32 decoder from the GGUF at ``path`` (default: the packaged SmolLM2-135M-Instruct), in eval mode.

    The parameters share memory with :meth:`GGUFModel.tensor`'s cache (one FP32 copy per process,
    whatever the number of models built): clone a weight before changing it in place.
    """
    g = open_gguf(path)
    with torch.device("meta"):        # no random initialisation of weights the GGUF replaces (assign=True below)
        model = Llama(LlamaConfig.from_gguf(g))
    state = {}
    for name, param in model.state_dict().items():
        w = g.tensor(gguf_name(name))
        if tuple(w.shape) != tuple(param.shape):
            raise GQAError("model", f"{gguf_name(name)} has shape {tuple(w.shape)}, expected {tuple(param.shape)}",
                           "the GGUF metadata does not match its tensors")
        with warnings.catch_warnings():   # the cache is read-only to numpy; torch only reads it here
            warnings.simplefilter("ignore", UserWarning)
            state[name] = torch.from_numpy(w)
    model.load_state_dict(state, assign=True)
    return model.eval()
