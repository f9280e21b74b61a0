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
import json, sys, torch
from pathlib import Path
from lang1ops.tasks import DEFAULT_CONTRACT
from lang1ops.scorer import MultitaskScorer, load_model
from training.artifacts import zero_shot_artifact
base, tmp, dtype, batch = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])

def status(field):  # MiB, from the kernel's accounting of this process
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024

# the notes come from the parent: generating them here would set the peak before the model loads
notes = json.loads((tmp / "notes.json").read_text())
before = status("VmRSS")
model = load_model(zero_shot_artifact(base, tmp / "a", DEFAULT_CONTRACT, 512), dtype=dtype)
load_peak, loaded = status("VmHWM"), status("VmRSS")
# reset the high-water mark (Linux clear_refs 5) so the scoring peak is not hidden by the load's
open("/proc/self/clear_refs", "w").write("5")
if batch:
    MultitaskScorer(model, max_batch_notes=batch, max_batch_tokens=10**9).score(notes[:batch])
print(json.dumps({"baseline_mib": before, "load_peak_mib": load_peak, "loaded_mib": loaded,
                  "scoring_peak_mib": status("VmHWM")}))
"""


def measure(base: Path, dtype: str, batch: int, notes: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "notes.json").write_text(json.dumps(notes[:batch]))
        out = subprocess.run([sys.executable, "-c", CHILD, str(base), tmp, dtype, str(batch)], capture_output=True,
                             text=True, check=True, timeout=3600)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(base_dir: Path | None = None, batches: tuple[int, ...] = (1, 2, 4, 8, 16), doc: Path | None = None) -> str:
    base = Path(base_dir or get_settings().model.base_model_dir)
    from bench.scoring import long_notes
    from lang1ops.base_model import load_tokenizer
    from lang1ops.scorer import cpu_has_native_bf16

    bf16_native = cpu_has_native_bf16()
    notes = long_notes(max(batches), load_tokenizer(base), 512)
    compute_dtype = "bfloat16" if bf16_native else "float32"
    rows = [(compute_dtype, 0, measure(base, compute_dtype, 0, notes))]
    for batch in batches:
        rows.append((compute_dtype, batch, measure(base, compute_dtype, batch, notes)))
    lines = "\n".join(f"| {d} | {b if b else 'load only'} | {r['load_peak_mib']:.0f} | {r['loaded_mib']:.0f} | "
                      f"{r['scoring_peak_mib']:.0f} | {r['scoring_peak_mib'] - r['loaded_mib']:+.0f} |" for d, b, r in rows)
    body = f"""## Memory of a scorer replica (SmolLM2-135M, 512-token notes, five tasks)

Command: `{COMMAND}`; each row is a fresh process; resident memory from /proc/self/status (VmRSS,
and VmHWM, the peak, reset after loading so that scoring's own peak shows). Machine: {machine()}.

| dtype | batch (notes) | peak while loading (MiB) | resident after load (MiB) | peak while scoring (MiB) | scoring growth (MiB) |
|---|---|---|---|---|---|
{lines}

{"The scorer serves bf16 on this CPU (native AVX-512 BF16)." if bf16_native else "This CPU has no native bf16 matmul: the scorer serves fp32 here, so the rows are fp32."}
Loading peaks above the resident size because the checkpoint is read in fp32 and then cast. While
scoring, memory grows with the batch: each 512-token note's keys/values (30 layers x 3 KV heads x 64
dims x 2 bytes in bf16, about 2.4 MB) plus the batch's activations and attention workspace, which
dominate; `serving.max_batch_size` (default 8) bounds it.
"""
    write_section("memory", body, doc)
    return body
