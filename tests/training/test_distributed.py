"""Ray Train with two CPU workers runs one epoch of mc-sft and writes a loadable artifact."""

from __future__ import annotations

import math

import pytest

from lang1ops.artifact import ArtifactManifest
from serving.scorer import MultitaskScorer, load_model
from training.dataset import Dataset
from training.mc_sft import SftConfig, prepare


@pytest.fixture
def ray_cluster():
    import ray

    from lang1ops.ray_local import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


def test_two_cpu_workers_one_epoch(ray_cluster, small_dataset, tiny_llama_dir, tmp_path):
    from training.distributed import train_mc_distributed

    config = SftConfig(method="lora", lr=1e-3, batch_size=4, max_note_tokens=48, tasks=["mortality", "los"],
                       max_examples={"train": 12, "val": 10}, max_steps=1)
    _, _, train, _ = prepare(Dataset.load(small_dataset), tiny_llama_dir, config)
    global_batch = config.batch_size * 2
    config.max_steps = config.eval_every = math.ceil(sum(len(v) for v in train.values()) / global_batch)  # one epoch
    out = train_mc_distributed(small_dataset, tiny_llama_dir, tmp_path / "artifact", config, workers=2)
    manifest = ArtifactManifest.load(out)
    assert manifest.lineage["workers"] == 2 and manifest.hyperparameters["steps"] == config.max_steps
    results, _ = MultitaskScorer(load_model(out)).score(["CC: chest pain. HPI: 70 yo M."])
    assert set(results[0]) == {"mortality", "los"}
