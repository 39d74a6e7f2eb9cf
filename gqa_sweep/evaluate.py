"""Evaluating one point (runs in a worker: top level, picklable arguments): search its table,
measure its error per scale, the area and power of its unit (hw_models), and optionally the
integer MiniLM's accuracy, or the integer decoder's perplexity and top-1 against FP32, with the
table in its slot."""

from __future__ import annotations

import contextlib
import json

from intsim import GQAError

from .spec import LLM_SLOTS, MINILM_SLOTS, one_line

_MINILM_CACHE: dict = {}
_LLM_CACHE: dict = {}


@contextlib.contextmanager
def _torch_threads(n: int):
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)   # FP32 sums in a fixed order: the same results on every executor
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _minilm_base(m: dict):
    """(model, tokenizer, calibration, sentences, FP32 embeddings), once per worker process."""
    key = (m["model"], m["calib_sentences"], m["sentences"], m["batch"])
    if key not in _MINILM_CACHE:
        from intsim.bert import Tokenizer, embed_fp32, load_model
        from intsim.calibration import calibrate
        from intsim.sentences import calibration_sentences, evaluation_sentences

        model = load_model(m["model"])
        tok = Tokenizer(m["model"], max_len=model.config.max_seq_len)
        calib = calibrate(model, tok, calibration_sentences(m["calib_sentences"]), batch_size=m["batch"])
        sentences = evaluation_sentences(m["sentences"])
        ref = embed_fp32(model, tok, sentences, m["batch"])
        _MINILM_CACHE.clear()
        _MINILM_CACHE[key] = (model, tok, calib, sentences, ref)
    return _MINILM_CACHE[key]


def _plugged(table, m: dict, slots: dict, model: str):
    """A model axis point's SimConfig options with the table in its slot (``plug_table``):
    ``(options, slot or None, note)``; no slot for the table's function: the config's tables, noted."""
    options, note = dict(m["options"]), ""
    slot = slots.get(table.function)
    if m["plug_table"]:
        if slot is None:
            note = f"no {model} slot for {table.function}; config tables used"
        else:
            options[slot] = table
    return options, slot, note


def _minilm_accuracy(table, m: dict) -> dict:
    import warnings

    from intsim.config import SimConfig
    from intsim.int_bert import IntBert, embed_int
    from intsim.metrics import compare

    with _torch_threads(1):
        model, tok, calib, sentences, ref = _minilm_base(m)
        options, slot, note = _plugged(table, m, MINILM_SLOTS, "MiniLM")
        try:
            enc = IntBert(model, calib, SimConfig(**options))
        except GQAError as exc:
            if not m["plug_table"] or slot is None:
                raise
            return {"minilm_note": f"the table cannot serve {slot}: {exc}"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            emb = embed_int(enc, tok, sentences, m["batch"])
    c = compare(emb, ref)
    return {"mean_cosine": c["mean_cosine"], "min_cosine": c["min_cosine"], "nn_agreement": c["nn_agreement"],
            "minilm_note": note}


def _llm_text(m: dict):
    """(tokenizer, the evaluation text: the first ``tokens`` tokens of the genre), once per worker process."""
    key = (m["text"], m["tokens"])
    if key not in _LLM_CACHE:
        from intsim.gguf_model import load_tokenizer
        from intsim.llm_eval import genre_text

        tok = load_tokenizer()
        _LLM_CACHE.clear()
        _LLM_CACHE[key] = (tok, tok.decode(tok.encode(genre_text(m["text"]))[:m["tokens"]]))
    return _LLM_CACHE[key]


def _llm_accuracy(table, m: dict) -> dict:
    from intsim.int_llama import build, default_config
    from intsim.llm_eval import compare_text

    with _torch_threads(1):
        tok, text = _llm_text(m)
        options, slot, note = _plugged(table, m, LLM_SLOTS, "decoder")
        try:       # the calibration is computed once per process (int_llama caches it)
            model, fp32, _ = build(default_config(**options), weights=m["weights"], layers=m["layers"])
        except GQAError as exc:
            if not m["plug_table"] or slot is None:
                raise
            return {"llm_note": f"the table cannot serve {slot}: {exc}"}
        c = compare_text(model, fp32, tok, text, m["context"])
    return {"ppl_int": c.ppl_int, "ppl_fp32": c.ppl_fp32, "ppl_ratio": c.ppl_ratio, "top1_agreement": c.top1_agreement,
            "llm_tokens": c.tokens, "llm_note": note}


def evaluate_point(point: dict) -> dict:
    """Search one point's table and measure it: a dict of column values (missing: not applicable).

    Bad input at this point (a :class:`GQAError` from the search, the cost model or the encoder)
    is recorded in the ``error`` column; any other exception is a bug and propagates.
    """
    import gqa_lut
    from hw_models import UnitConfig, compare
    from intsim import PWLDatapath

    dp = PWLDatapath(**point["datapath"])
    out = {"scales": ",".join(str(e) for e in point["scales"]), **{k: point["datapath"][k] for k in
                                                                     ("in_bits", "slope_bits", "slope_frac",
                                                                      "icpt_bits", "icpt_frac")}}
    kw = point["options"]          # the method's own options (the spec's table named after it)
    try:
        table = gqa_lut.search(point["function"], point["entries"], point["method"], datapath=dp,
                               scales=point["scales"], domain=tuple(point["domain"]), seed=point["seed"],
                               progress=False, binding=False, **kw)  # the grid over formats answers that itself
    except GQAError as exc:
        return {**out, "error": one_line(f"search: {exc}")}
    err = table.error()
    out.update(mean_mse=err.mean_mse, max_abs=err.max_max_abs,
               clipped=table.provenance.get("coefficients", {}).get("clipped"))
    for e, mse, mx in zip(err.scales, err.mse, err.max_abs):
        out[f"mse_e{e}"], out[f"max_abs_e{e}"] = float(mse), float(mx)
    out["table"] = json.dumps({"domain": list(table.domain), "scales": list(table.scales),
                               "datapath": table.datapath.to_dict(),
                               "breakpoints": [float(p) for p in table.breakpoints],
                               "slopes": [int(k) for k in table.slopes],
                               "intercepts": [int(b) for b in table.intercepts]}, separators=(",", ":"))
    hw = point["hw"]
    try:
        cfg = UnitConfig.from_table(table, None, programmable=hw["programmable"], pipeline=hw["pipeline"],
                                    io_registers=hw["io_registers"])
        r = compare(cfg, hw["node"], hw["freq_mhz"], hw["activity"], hw["calibration"])
    except GQAError as exc:
        return {**out, "error": one_line(f"hw: {exc}")}
    u = r["units"]
    out.update(int_area_um2=u["int"].area_um2, int_power_mw=u["int"].power_mw, int_energy_pj=u["int"].energy_pj,
               fp32_area_um2=u["fp32"].area_um2, fp32_power_mw=u["fp32"].power_mw,
               fp32_energy_pj=u["fp32"].energy_pj, int32_area_um2=u["int32"].area_um2,
               int32_power_mw=u["int32"].power_mw, area_saving_pct=r["savings_pct"]["fp32"]["area_um2"],
               power_saving_pct=r["savings_pct"]["fp32"]["power_mw"])
    if point["minilm"]:
        try:
            out.update(_minilm_accuracy(table, point["minilm"]))
        except GQAError as exc:
            out["error"] = one_line(f"minilm: {exc}")
    if point.get("llm"):
        try:
            out.update(_llm_accuracy(table, point["llm"]))
        except GQAError as exc:
            out["error"] = one_line(f"llm: {exc}")
    return out
