"""Peak resident memory of a scorer replica: the model loaded, then scoring batches of
512-token notes of growing size. Each configuration runs in a fresh process (peak RSS only
grows within a process)."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.report import machine, write_section
from lang1ops.settings import get_settings

COMMAND = "python -m bench memory"

CHILD = r"""
import json, resource, sys, torch
from pathlib import Path
from lang1ops.tasks import DEFAULT_CONTRACT
from lang1ops.base_model import load_tokenizer
from serving.scorer import MultitaskScorer, load_model
from training.artifacts import zero_shot_artifact
from bench.scoring import long_notes
base, tmp, dtype, batch = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
notes = long_notes(max(batch, 1), load_tokenizer(base), 512) if batch else []
before = rss()
model = load_model(zero_shot_artifact(base, tmp / "a", DEFAULT_CONTRACT, 512), dtype=dtype)
loaded = rss()
if batch:
    MultitaskScorer(model, max_batch_notes=batch, max_batch_tokens=10**9).score(notes[:batch])
print(json.dumps({"baseline_mib": before, "loaded_mib": loaded, "peak_mib": rss()}))
"""


def measure(base: Path, dtype: str, batch: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, str(base), tmp, dtype, str(batch)], capture_output=True,
                             text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(base_dir: Path | None = None, batches: tuple[int, ...] = (1, 2, 4, 8, 16), doc: Path | None = None) -> str:
    base = Path(base_dir or get_settings().model.base_model_dir)
    from serving.scorer import cpu_has_native_bf16

    bf16_native = cpu_has_native_bf16()
    rows = []
    load_bf16 = measure(base, "bfloat16", batches[0] if bf16_native else 0)
    rows.append(("bfloat16", batches[0] if bf16_native else 0, load_bf16))
    compute_dtype = "bfloat16" if bf16_native else "float32"
    for batch in batches:
        rows.append((compute_dtype, batch, measure(base, compute_dtype, batch)))
    lines = "\n".join(f"| {d} | {b if b else 'load only'} | {r['loaded_mib'] - r['baseline_mib']:.0f} | {r['peak_mib']:.0f} |"
                      for d, b, r in rows)
    body = f"""## Memory of a scorer replica (SmolLM2-135M, 512-token notes, five tasks)

Command: `{COMMAND}`; each row is a fresh process (peak RSS from getrusage). Machine: {machine()}.

| dtype | batch (notes) | model load (MiB) | peak RSS (MiB) |
|---|---|---|---|
{lines}

{"" if bf16_native else "This CPU has no native bf16 matmul, so bf16 is measured loaded only (its emulated scoring would take minutes per note) and the batch rows use fp32, the dtype the scorer runs in here."}
The growth with batch size is the keys/values of the notes (about 4.7 MB per 512-token note in fp32 for
30 layers x 3 KV heads x 64 dims) plus activations of the batch.
"""
    write_section("memory", body, doc)
    return body
