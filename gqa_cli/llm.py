"""``gqa llm``: the integer-only SmolLM2-135M decoder from the command line.

    gqa llm generate --prompt "The capital of France is" --max-new-tokens 16 --compare-fp32
    gqa llm eval --text essay.txt --context 512 --json
    gqa llm eval --text essay.txt --weights q4_1 --report report.json   # op statistics, energy per token
    gqa llm bench --seq 256 --new-tokens 32

Library code lives in :mod:`intsim.int_llama` (the model) and :mod:`intsim.llm_eval` (the
comparisons and timings); this module parses and prints.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from intsim import GQAError
from intsim.fileio import atomic_write_json, check_outputs, read_config_file, read_text

from .sim import print_machine

# library argument names -> the options that set them (a library error names the option the user typed)
OPTION_OF = {"weights": "--weights", "text": "--text", "context": "--context", "prompt": "--prompt",
             "max_new_tokens": "--max-new-tokens", "seq": "--seq", "new_tokens": "--new-tokens",
             "repeats": "--repeats", "layers": "--layers"}


@contextlib.contextmanager
def _as_options():
    try:
        yield
    except GQAError as exc:
        if exc.field not in OPTION_OF:
            raise
        problem = str(exc).split(": ", 1)[1]
        raise GQAError(OPTION_OF[exc.field], problem) from None


def _config(path):
    """The decoder's datapath config: its defaults (int_llama.DECODER_DEFAULTS), then the file's options."""
    from intsim.config import SimConfig
    from intsim.int_llama import DECODER_DEFAULTS

    options = read_config_file(path) if path else {}
    if not isinstance(options, dict):
        raise GQAError("--config", f"{path} does not hold a mapping of option names to values")
    return SimConfig.from_dict({**DECODER_DEFAULTS, **options}, source=str(path) if path else "config")


def _model_limits():
    """The packaged model's tokenizer and context length, from the GGUF's metadata: requests are
    checked against them before the (costly) build, so a bad option fails at once."""
    from intsim.gguf_model import load_tokenizer, open_gguf
    from intsim.llama import LlamaConfig

    return load_tokenizer(), LlamaConfig.from_gguf(open_gguf()).max_seq_len


def _build(a):
    from intsim.int_llama import build

    cfg = _config(a.config)
    with _as_options():
        int_model, fp32, tok = build(cfg, weights=a.weights, layers=a.layers, progress=not a.quiet)
    return cfg, int_model, fp32, tok


def _show(tok, ids) -> str:
    return json.dumps(tok.decode(ids), ensure_ascii=False)


def cmd_generate(a) -> int:
    from intsim.llm_eval import compare_generation

    from intsim.llama import check_generation

    if not a.prompt.strip():
        raise GQAError("--prompt", "is empty or whitespace only", "give a prompt text")
    tok, limit = _model_limits()
    with _as_options():
        ids = check_generation(tok.encode(a.prompt), a.max_new_tokens, limit)
    cfg, int_model, fp32, tok = _build(a)
    print(f"config: {cfg.describe()}; weights {a.weights}")
    with _as_options():
        if a.compare_fp32:
            g = compare_generation(int_model, fp32, ids, a.max_new_tokens, eos_id=tok.eos_id, progress=not a.quiet)
            new = g.int_ids
        else:
            new = int_model.generate(ids, a.max_new_tokens, eos_id=tok.eos_id, progress=not a.quiet)
    print(f"integer: {_show(tok, ids + new)}")
    if a.compare_fp32:
        print(f"fp32:    {_show(tok, ids + g.fp32_ids)}")
        if g.diverges_at is None:
            print(f"the integer and FP32 generations are identical ({len(new)} new tokens)")
        else:
            i = g.diverges_at
            print(f"they part at new token {i}: integer {_show(tok, g.int_ids[i:i + 1])}, "
                  f"FP32 {_show(tok, g.fp32_ids[i:i + 1])} (after {_show(tok, ids + new[:i])})")
    return 0


def energy_per_token(ops: dict, tokens: int) -> dict:
    """hw_models' energy of an integer run's op statistics, integer and FP32, per processed token."""
    from hw_models.model_energy import model_energy

    e = model_energy(ops)
    return {"node_nm": e["node_nm"], "tokens": tokens, "int_pj_per_token": e["int"]["total_pj"] / tokens,
            "fp32_pj_per_token": e["fp32"]["total_pj"] / tokens, "int_gemm_share": e["int"]["gemm_share"],
            "savings_pct": e["savings_pct"], "energy": e}


def cmd_eval(a) -> int:
    from intsim.gemm import machine_report
    from intsim.llm_eval import compare_text
    from intsim.opstats import OpStats
    from intsim.perplexity import check_context, token_stream

    check_outputs({"--report": a.report})
    text = read_text(a.text, "--text", "UTF-8 text file")
    if not text.strip():
        raise GQAError("--text", f"{a.text} is empty or whitespace only", "give a text of at least two tokens")
    tok, limit = _model_limits()
    with _as_options():
        check_context(a.context, limit)
        token_stream(tok, text)
    cfg, int_model, fp32, tok = _build(a)
    stats = OpStats() if a.report else None
    with _as_options():
        c = compare_text(int_model, fp32, tok, text, a.context, stats=stats, progress=not a.quiet)
    result = {"ppl_int": c.ppl_int, "ppl_fp32": c.ppl_fp32, "top1_agreement": c.top1_agreement, "tokens": c.tokens}
    if a.report:
        ops = stats.to_dict()
        energy = energy_per_token(ops, c.processed_tokens)
        report = {"config": cfg.to_dict(), "weights": a.weights, "text": str(a.text), "context": a.context,
                  **c.to_dict(), "op_stats": ops, "energy_per_token": energy, "machine": machine_report()}
        atomic_write_json(a.report, report, "--report")
    if a.json:
        print(json.dumps(result))
        return 0
    print(f"config: {cfg.describe()}; weights {a.weights}")
    print(f"{c.tokens} predicted tokens in {c.windows} window(s) of up to {a.context}")
    print(f"perplexity: integer {c.ppl_int:.4f}, FP32 {c.ppl_fp32:.4f}, ratio {c.ppl_ratio:.4f}")
    print(f"top-1 agreement with FP32: {100 * c.top1_agreement:.2f}%")
    if a.report:
        print(f"energy per token (hw_models, {energy['node_nm']} nm): integer {energy['int_pj_per_token'] * 1e-6:.3f} uJ "
              f"(GEMM share {100 * energy['int_gemm_share']:.1f}%), FP32 {energy['fp32_pj_per_token'] * 1e-6:.3f} uJ; "
              f"savings {energy['savings_pct']['total']:.1f}%; overflows {ops['total_overflows']}")
        print(f"wrote {a.report}")
    return 0


def cmd_bench(a) -> int:
    from intsim.llm_eval import check_bench, time_decoder

    _, limit = _model_limits()
    with _as_options():
        check_bench(a.seq, a.new_tokens, a.repeats, limit)
    cfg, int_model, fp32, _ = _build(a)
    with _as_options():
        t = time_decoder(int_model, fp32, a.seq, a.new_tokens, a.repeats, progress=not a.quiet)
    print(f"config: {cfg.describe()}; weights {a.weights}")
    print(f"prompt {t['seq']} tokens, {t['new_tokens']} new, torch threads {t['torch_threads']}, median of {t['repeats']}")
    print(f"prefill:  integer {t['prefill_s_int']:.3f} s, FP32 torch {t['prefill_s_fp32']:.3f} s, "
          f"ratio (integer / FP32) {t['prefill_ratio']:.2f}")
    print(f"decode:   integer {t['decode_tokens_per_s_int']:.1f} tokens/s, FP32 torch {t['decode_tokens_per_s_fp32']:.1f} "
          f"tokens/s, ratio (integer time / FP32 time) {t['decode_ratio']:.2f}")
    print_machine()
    return 0


def _common(p) -> None:
    p.add_argument("--config", help="datapath config (JSON, or TOML with a .toml suffix); `gqa sim --options` lists choices")
    p.add_argument("--weights", default="w8", help="w8 (int8 per channel from the dequantized weights) or q4_1 "
                   "(the GGUF's own Q4_1 codes, W4A8)")
    p.add_argument("--layers", type=int, default=None, help=argparse.SUPPRESS)   # tests: the first N layers only
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def register(sub) -> None:
    llm = sub.add_parser("llm", help="integer-only SmolLM2-135M decoder: generate, eval, bench")
    cmds = llm.add_subparsers(dest="llm_command", required=True)

    g = cmds.add_parser("generate", help="greedy integer generation (with --compare-fp32: the FP32 text beside it)")
    g.add_argument("--prompt", required=True, help="prompt text")
    g.add_argument("--max-new-tokens", type=int, default=32)
    g.add_argument("--compare-fp32", action="store_true", help="also generate with FP32 and say where they part")
    _common(g)
    g.set_defaults(run=cmd_generate)

    e = cmds.add_parser("eval", help="perplexity, integer and FP32, and top-1 agreement over a text file")
    e.add_argument("--text", required=True, help="UTF-8 text file: one token stream (no BOS)")
    e.add_argument("--context", type=int, default=512, help="tokens per non-overlapping window (512)")
    e.add_argument("--json", action="store_true", help="print one JSON object: ppl_int, ppl_fp32, top1_agreement, tokens")
    e.add_argument("--report", help="write op statistics and energy per token (hw_models) as JSON")
    _common(e)
    e.set_defaults(run=cmd_eval)

    b = cmds.add_parser("bench", help="prefill time and decode tokens/s, integer and FP32 torch, in one run")
    b.add_argument("--seq", type=int, default=256, help="prompt tokens (256)")
    b.add_argument("--new-tokens", type=int, default=32, help="decoded tokens (32)")
    b.add_argument("--repeats", type=int, default=3)
    _common(b)
    b.set_defaults(run=cmd_bench)
