"""Ray Train with two CPU workers runs one epoch of mc-sft and writes a loadable artifact.

The training runs in a fresh Python process, as `lang1ops train --workers 2` would: a Ray driver
lives as long as its local cluster, and sharing one pytest process with the other tests' Ray and
Serve instances (started and shut down before it) is not what a deployment does."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from lang1ops.artifact import ArtifactManifest
from lang1ops.scorer import MultitaskScorer, load_model

TRAIN = r"""
import json, math, sys
from pathlib import Path
from lang1ops.ray_local import ensure_ray
from training.dataset import Dataset
from training.distributed import train_mc_distributed
from training.mc_sft import SftConfig, prepare

dataset, base, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
ensure_ray(num_cpus=2)
config = SftConfig(method="lora", lr=1e-3, batch_size=4, max_note_tokens=48, tasks=["mortality", "los"],
                   max_examples={"train": 12, "val": 10}, max_steps=1)
_, _, train, _ = prepare(Dataset.load(dataset), base, config)
config.max_steps = config.eval_every = math.ceil(sum(len(v) for v in train.values()) / (config.batch_size * 2))
path = train_mc_distributed(dataset, base, out, config, workers=2)
print(json.dumps({"artifact": str(path), "steps": config.max_steps}))
"""


def test_two_cpu_workers_one_epoch(small_dataset, tiny_llama_dir, tmp_path):
    # Its own session and no Ray address inherited: the training's Ray cluster, and whatever it
    # signals when it stops, is separate from anything else in this process group.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    run = subprocess.run([sys.executable, "-c", TRAIN, str(small_dataset), str(tiny_llama_dir), str(tmp_path / "artifact")],
                         capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, env=env,
                         start_new_session=True)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    manifest = ArtifactManifest.load(result["artifact"])
    assert manifest.lineage["workers"] == 2 and manifest.hyperparameters["steps"] == result["steps"]
    results, _ = MultitaskScorer(load_model(result["artifact"])).score(["CC: chest pain. HPI: 70 yo M."])
    assert set(results[0]) == {"mortality", "los"}
