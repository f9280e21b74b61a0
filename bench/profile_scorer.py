"""Where the scorer's time goes: torch.profiler over one batch of 512-token notes.

The scoring benchmark says how fast the scorer is against the naive way and the matmul peak;
this part says why: the share of CPU time in matrix multiplies (the part that runs near the
peak), in attention, and in everything else (norms, activations, copies, the KV-cache
branching), so a missed target points at the operator that limits it.
"""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from bench.report import machine, write_section
from bench.scoring import long_notes
from lang1ops.base_model import load_tokenizer
from lang1ops.scorer import MultitaskScorer, load_model
from lang1ops.settings import get_settings
from lang1ops.tasks import DEFAULT_CONTRACT
from training.artifacts import zero_shot_artifact

COMMAND = "python -m bench profile_scorer"
MATMUL = ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear")
ATTENTION = ("aten::_scaled_dot_product", "aten::scaled_dot_product", "aten::_softmax", "aten::softmax")


def category(op: str) -> str:
    if op.startswith(ATTENTION):
        return "attention (SDPA, softmax)"
    if op in ("aten::mm", "aten::addmm", "aten::bmm"):
        return "matrix multiplies (projections, MLP)"
    if op in ("aten::silu", "aten::mul", "aten::add", "aten::pow", "aten::mean", "aten::rsqrt", "aten::neg",
              "aten::cat", "aten::cos", "aten::sin"):
        return "elementwise (RMSNorm, SiLU, RoPE, residuals)"
    if op in ("aten::copy_", "aten::contiguous", "aten::clone", "aten::index_select", "aten::expand", "aten::narrow",
              "aten::slice", "aten::embedding", "aten::index", "aten::to", "aten::_to_copy", "aten::empty",
              "aten::repeat_interleave", "aten::transpose", "aten::view", "aten::reshape", "aten::t"):
        return "copies, views and indexing (KV-cache branching)"
    return "other"


def run(base_dir: Path | None = None, n_notes: int = 8, batch: int = 8, min_tokens: int = 512,
        doc: Path | None = None) -> str:
    base_dir = Path(base_dir or get_settings().model.base_model_dir)
    tokenizer = load_tokenizer(base_dir)
    notes = long_notes(n_notes, tokenizer, min_tokens)
    with tempfile.TemporaryDirectory() as tmp:
        scorer = MultitaskScorer(load_model(zero_shot_artifact(base_dir, Path(tmp) / "mc", DEFAULT_CONTRACT, 512)),
                                 max_batch_notes=batch)
        scorer.score(notes[:2])
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            scorer.score(notes)
    # self CPU time per operator: each microsecond counted once, in the op that spent it
    totals: dict[str, float] = defaultdict(float)
    top: list[tuple[str, float]] = []
    for event in prof.key_averages():
        totals[category(event.key)] += event.self_cpu_time_total
        top.append((event.key, event.self_cpu_time_total))
    whole = sum(totals.values()) or 1.0
    top.sort(key=lambda kv: -kv[1])
    rows = "\n".join(f"| {name} | {100 * us / whole:.1f}% |" for name, us in sorted(totals.items(), key=lambda kv: -kv[1]))
    ops = "\n".join(f"| `{name}` | {100 * us / whole:.1f}% |" for name, us in top[:8])
    body = f"""## Where the scorer's time goes (torch.profiler)

Command: `{COMMAND}`. Machine: {machine()}.
{n_notes} notes of {min_tokens}+ tokens (right-truncated to 512), one batch, five tasks, self CPU time by operator.

| category | share of CPU time |
|---|---|
{rows}

| top operators | share |
|---|---|
{ops}
"""
    write_section("profile_scorer", body, doc)
    return body
