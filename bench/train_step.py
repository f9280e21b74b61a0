"""Where an mc-sft training step spends its time on this CPU, and what makes it faster.

One optimizer step of full finetuning on SmolLM2-135M, timed in three parts (forward with the
loss, backward, AdamW), for each way of building the step: every (note, question) pair as its
own prompt (as the paper's code does) or each note encoded once and asked all its questions
from the kept keys and values (`shared_notes`, the scorer's branching with gradients), in
float32 and under bf16 autocast. Notes fill the 512-token window, as every note of the demo
hospital does. Achieved FLOP/s are counted as 3x the forward FLOPs (backward twice the
forward) against the matmul peak measured in the same run.
"""

from __future__ import annotations

import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from bench.report import machine, write_section
from bench.scoring import flops_per_note, long_notes, matmul_peak
from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.prompts import PromptEncoder
from lang1ops.scorer import cpu_has_native_bf16
from lang1ops.settings import get_settings
from lang1ops.tasks import DEFAULT_CONTRACT
from training.mc_batches import Example, NoteItem, collate, collate_notes, option_loss, shared_option_loss

COMMAND = "python -m bench train_step"
DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16 autocast"}


def _batches(encoder: PromptEncoder, notes: list[str], steps: int, notes_per_type: int):
    """Per step: `notes_per_type` admission notes asked the four H&P questions and as many
    discharge summaries asked readmission (the demo's note types), as NoteItems and as Examples."""
    hp = [t.name for t in DEFAULT_CONTRACT.tasks if t.name != "readmission"]
    out, cursor = [], 0
    for _ in range(steps):
        items = []
        for group, tasks in (("admission", hp), ("discharge", ["readmission"])):
            for _ in range(notes_per_type):
                items.append(NoteItem(encoder.encode_note(notes[cursor % len(notes)]), group, {t: 0 for t in tasks}))
                cursor += 1
        examples = [Example(item.ids + encoder.suffix_ids(t), t, y, encoder.option_token_ids(t))
                    for item in items for t, y in item.labels.items()]
        out.append((items, examples))
    return out


def _step_flops(model_config, encoder: PromptEncoder, items: list[NoteItem], shared: bool) -> float:
    forward = 0.0
    for item in items:
        suffixes = [len(encoder.suffix_ids(t)) for t in item.labels]
        options = [len(encoder.option_token_ids(t)) for t in item.labels]
        if shared:
            forward += flops_per_note(model_config, len(item.ids), suffixes, options, naive=False)
        else:
            forward += sum(flops_per_note(model_config, len(item.ids) + s, [], [], naive=False) for s in suffixes)
    return 3 * forward


def _time_steps(model, batches, encoder: PromptEncoder, shared: bool, dtype: torch.dtype) -> dict[str, list[float]]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, betas=(0.9, 0.999), eps=1e-5, weight_decay=0.02)
    autocast = nullcontext() if dtype == torch.float32 else torch.autocast("cpu", dtype=dtype)
    times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for number, (items, examples) in enumerate(batches):
        start = time.perf_counter()
        with autocast:
            if shared:
                loss = shared_option_loss(model, collate_notes(items, encoder, "cpu"), encoder)
            else:
                loss = option_loss(model, collate(examples, encoder.tokenizer.pad_token_id, "cpu"))
        forward = time.perf_counter()
        loss.backward()
        backward = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = time.perf_counter()
        if number:  # the first step warms the allocator and the kernels' caches
            times["forward"].append(forward - start)
            times["backward"].append(backward - forward)
            times["optimizer"].append(done - backward)
    return times


def run(base_dir: Path | None = None, steps: int = 4, notes_per_type: int = 2, note_tokens: int = 512,
        doc: Path | None = None) -> str:
    base = Path(base_dir or get_settings().model.base_model_dir)
    tokenizer = load_tokenizer(base)
    encoder = PromptEncoder(tokenizer, DEFAULT_CONTRACT, note_tokens)
    notes = long_notes(steps * notes_per_type * 2, tokenizer, min_tokens=note_tokens)
    batches = _batches(encoder, notes, steps, notes_per_type)
    peaks = {torch.float32: matmul_peak(torch.float32)}
    dtypes = [torch.float32]
    if cpu_has_native_bf16():
        peaks[torch.bfloat16] = matmul_peak(torch.bfloat16)
        dtypes.append(torch.bfloat16)
    rows, pairs_per_s = [], {}
    for shared in (False, True):
        for dtype in dtypes:
            model = load_causal_lm(base, dtype=torch.float32)  # fp32 master weights, as training keeps them
            model.train()
            times = _time_steps(model, batches, encoder, shared, dtype)
            step = [sum(parts) for parts in zip(*times.values(), strict=True)]
            median_step = statistics.median(step)
            items, examples = batches[0]
            flops = _step_flops(model.config, encoder, items, shared)
            suffix_tokens = sum(len(encoder.suffix_ids(t)) for i in items for t in i.labels)
            tokens = sum(len(i.ids) for i in items) * (1 if shared else 0) + suffix_tokens + (
                0 if shared else sum(len(i.ids) * len(i.labels) for i in items))
            pairs_per_s[(shared, dtype)] = len(examples) / median_step
            rows.append(
                f"| {'shared note' if shared else 'one prompt per pair'} | {DTYPE_NAMES[dtype]} | "
                + " | ".join(f"{statistics.median(times[p]):.2f}" for p in ("forward", "backward", "optimizer"))
                + f" | {median_step:.1f} ({min(step):.1f}-{max(step):.1f}) | {tokens / median_step:,.0f} | "
                f"{len(examples) / median_step:.2f} | {flops / median_step / 1e9:.0f} = {100 * flops / median_step / peaks[dtype]:.0f}% |")
            del model
    speedup = pairs_per_s[(True, dtypes[-1])] / pairs_per_s[(False, dtypes[-1])]
    bf16_gain = (pairs_per_s[(True, torch.bfloat16)] / pairs_per_s[(True, torch.float32)]
                 if torch.bfloat16 in dtypes else float("nan"))
    config_note = (f"{len(batches[0][1])} (note, question) pairs per step from {len(batches[0][0])} notes "
                   f"({notes_per_type} admission notes x 4 questions, {notes_per_type} discharge summaries x 1)")
    body = f"""## Where an mc-sft training step goes (full finetuning, SmolLM2-135M, 512-token notes)

Command: `{COMMAND}`. Machine: {machine()}.
{config_note}; {steps - 1} timed steps after one warm-up step, median (range) in seconds. Matmul peak
measured in the same run: fp32 {peaks[torch.float32] / 1e9:.0f} GFLOP/s""" + (
        f", bf16 {peaks[torch.bfloat16] / 1e9:.0f} GFLOP/s" if torch.bfloat16 in peaks else ", no native bf16") + f""".
Achieved FLOP/s count 3x the forward FLOPs of the step (full finetuning: backward about twice the
forward) against the peak of the step's dtype.

| prompts | dtype | forward s | backward s | AdamW s | step s | tokens run/s | pairs/s | GFLOP/s = % of peak |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

Encoding each note once and asking its questions from the kept keys and values trains on the same
loss with the same gradients (a test checks both, full and LoRA) and is **{speedup:.1f}x** the pairs
per second of one prompt per pair at the same dtype ({DTYPE_NAMES[dtypes[-1]]}); bf16 autocast is
{bf16_gain:.1f}x fp32 on the shared path (training defaults to it where the CPU runs bf16 natively). The admission note's 512 tokens are run once
for four questions instead of four times. Padding is not where time goes here: every note of the
demo hospital is longer than 512 tokens (5th percentile 609), so every truncated note is exactly
512 tokens and only the question suffixes (32-68 tokens) differ; length bucketing or packing would
save nothing on these notes. Logits are computed only for the option letters at the answer position
(not the 49k-word vocabulary at every position) on both paths. The AdamW step over 135M fp32
parameters is memory-bound and small beside forward and backward.
"""
    write_section("train_step", body, doc)
    return body
