"""GPU throughput for a Lang1-1B-shaped model (TinyLlama-1.1B configuration, random weights
built locally): the naive way, the PyTorch one-pass scorer and vLLM with prefix caching,
against the GPU's bf16 matmul peak measured in the same run.

Runs only where CUDA is present (the device tool's H100/H200); elsewhere it leaves the
section of docs/benchmarks.md as it is and says why. vLLM comes from the GPU image.
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from bench.report import Measurement, machine, write_section
from lang1ops.settings import get_settings
from lang1ops.tasks import DEFAULT_CONTRACT

COMMAND = "python -m bench gpu"
TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                 num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False)


def build_model(out: Path, tokenizer_dir: Path) -> Path:
    """TinyLlama-1.1B shape with the base tokenizer's vocabulary, random bf16 weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from lang1ops.base_model import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, **TINYLLAMA)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def gpu_peak(size: int = 8192, repeats: int = 10) -> float:
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def run(n_notes: int = 512, repeats: int = 3, doc: Path | None = None) -> str:
    if not torch.cuda.is_available():
        message = "gpu benchmark: no CUDA device here; docs/benchmarks.md keeps its GPU section unchanged"
        print(message)
        return message
    from bench.scoring import flops_per_note, long_notes
    from lang1ops.base_model import load_tokenizer
    from lang1ops.prompts import PromptEncoder
    from lang1ops.scorer import MultitaskScorer, load_model
    from serving.vllm_backend import VllmScorer, vllm_available
    from training.artifacts import zero_shot_artifact

    base = get_settings().model.base_model_dir
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model(Path(tmp) / "tinyllama", base)
        artifact = zero_shot_artifact(model_dir, Path(tmp) / "mc", DEFAULT_CONTRACT, 512)
        tokenizer = load_tokenizer(model_dir)
        notes = long_notes(n_notes, tokenizer, 512)
        peak = gpu_peak()
        hf = MultitaskScorer(load_model(artifact, device="cuda", dtype="bfloat16"), max_batch_notes=64,
                             max_batch_tokens=64 * 600)
        hf.score(notes[:8])
        hf_rates = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            hf.score(notes)
            torch.cuda.synchronize()
            hf_rates.append(len(notes) / (time.perf_counter() - start))
        del hf
        torch.cuda.empty_cache()
        vllm_rates = []
        if vllm_available():
            engine = VllmScorer(model_dir, artifact)
            engine.score_notes(notes[:8])
            for _ in range(repeats):
                start = time.perf_counter()
                engine.score_notes(notes)
                vllm_rates.append(len(notes) / (time.perf_counter() - start))
        encoder = PromptEncoder(tokenizer, DEFAULT_CONTRACT, 512)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
        flops = flops_per_note(config, 512, [len(encoder.suffix_ids(t)) for t in DEFAULT_CONTRACT.names],
                               [len(encoder.option_token_ids(t)) for t in DEFAULT_CONTRACT.names], naive=False)
    device = torch.cuda.get_device_name()
    h = Measurement(hf_rates)
    rows = f"| PyTorch one-pass scorer, bf16 (notes/s) | {h.median:,.0f} | {h.spread} | {100 * flops * h.median / peak:.0f}% |\n"
    if vllm_rates:
        v = Measurement(vllm_rates)
        rows += f"| vLLM, prefix caching (notes/s) | {v.median:,.0f} | {v.spread} | {100 * flops * v.median / peak:.0f}% |\n"
    else:
        rows += "| vLLM | not installed in this environment | | |\n"
    body = f"""## GPU: Lang1-1B-shaped model (TinyLlama-1.1B configuration, random weights)

Command: `{COMMAND}` on {device}, {datetime.now(UTC):%Y-%m-%d}. Machine: {machine()}.
Five tasks per 512-token note, {n_notes} notes; {flops / 1e9:.0f} GFLOP per note; bf16 matmul peak measured now
{peak / 1e12:.0f} TFLOP/s.

| path | median | spread | of the bf16 peak |
|---|---|---|---|
{rows}"""
    write_section("gpu", body, doc)
    return body
