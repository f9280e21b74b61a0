"""Every benchmark runs end to end at CI size (tiny model, a few notes), writing to a scratch
copy of the report, so the benchmark code never rots. The figures themselves come from
`make bench` on real hardware, never from here."""

from __future__ import annotations

import ast
import json
import re

import numpy as np
import pytest

import bench.ceiling
import bench.fast_path
import bench.faults
import bench.generator
import bench.gpu
import bench.memory
import bench.peers
import bench.profile_scorer
import bench.scoring
import bench.service
import bench.train_step
import bench.training


@pytest.fixture
def doc(tmp_path):
    return tmp_path / "benchmarks.md"


def test_generator(doc):
    body = bench.generator.run(repeats=1, patients=60, doc=doc)
    assert "encounters per second" in body and "<!-- bench:generator -->" in doc.read_text()


def test_peers_table_runs_without_any_peer_engine(tiny_llama_dir, doc, tmp_path):
    """The tiny Llama has no GGUF: llama.cpp's row says why it is absent instead of failing, and
    the project's fp32 scorer agrees with the naive way it is compared with."""
    body = bench.peers.run(tiny_llama_dir, n_notes=3, n_naive=1, repeats=1, min_tokens=64, batch=2, doc=doc,
                           cache_dir=tmp_path / "peers")
    assert "(a) naive" in body and "(d) ONNX Runtime" in body
    llama_row = next(line for line in body.splitlines() if line.startswith("| (c) llama.cpp"))
    assert "not installed" in llama_row or "needs the base as GGUF" in llama_row
    fp32_row = next(line for line in body.splitlines() if line.startswith("| (b) lang1-ops scorer") and "| fp32 |" in line)
    assert float(fp32_row.split(" | ")[6]) < 1e-3


def test_scoring_agrees_with_the_naive_way(tiny_llama_dir, doc):
    body = bench.scoring.run(tiny_llama_dir, n_notes=3, n_naive=1, repeats=1, min_tokens=64, batch=2, doc=doc)
    assert "speed-up (b, float32)/(a)" in body and "GFLOP/s" in body
    assert "(b) lang1-ops scorer, int8-dynamic" in body and "**int8.**" in body and "int8 GEMM peak" in body
    difference = float(body.split("max probability difference (a) vs (b, float32) | ")[1].split(" ")[0])
    assert difference < 1e-3


def test_training(tiny_llama_dir, doc):
    body = bench.training.run(train_notes=40, val_notes=20, base_dir=tiny_llama_dir, patients=120, max_note_tokens=64,
                              layers=(1, 2), doc=doc)
    assert "cold" in body and "warm" in body


def test_fast_path_table(tiny_llama_dir, small_dataset, doc, tmp_path):
    def table():
        return bench.fast_path.run(dataset_dir=small_dataset, base_dir=tiny_llama_dir, layers=(1, 2), max_note_tokens=48,
                                   n_resamples=20, doc=doc, cache_dir=tmp_path / "cache")

    body = table()
    rows = [line for line in body.splitlines() if line.startswith("| layer") or line.startswith("| TF-IDF")]
    # 2 layers x (4 poolings, n-grams, n-grams with the dense weight chosen), 2 TF-IDF rows; encoded
    assert len(rows) == 2 * 6 + 2 and "min," in body
    chosen = re.search(r"layer 1: (\{.*?\})", body)
    assert chosen and set(ast.literal_eval(chosen.group(1)).values()) <= {0.0, 0.25, 0.5, 1.0}
    assert "read from the cache" in table()  # a rerun refits only


def test_memory(tiny_llama_dir, doc):
    body = bench.memory.run(tiny_llama_dir, batches=(1,), doc=doc)
    assert "peak while scoring" in body and "| load only |" in body


def test_service(tiny_llama_dir, doc):
    body = bench.service.run(tiny_llama_dir, n_notes=4, latency_requests=2, batch=2, repeats=1, min_tokens=64, doc=doc)
    assert "Service / in-process" in body and "p99" in body
    for layout in ("1 x 2 torch threads", "2 x 1 torch thread"):
        assert f"in process, {layout}" in body and f"service, {layout}" in body
    assert "| scorer replica |" in body  # the CPU table found the replicas' processes


def test_gpu_part_leaves_the_report_alone_without_cuda(doc):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the GPU benchmark is a real run, not a smoke test")
    assert "no CUDA" in bench.gpu.run(doc=doc) and not doc.exists()


def test_profile_scorer(tiny_llama_dir, doc):
    body = bench.profile_scorer.run(tiny_llama_dir, n_notes=2, batch=2, min_tokens=64, doc=doc)
    assert "matrix multiplies" in body and "<!-- bench:profile_scorer -->" in doc.read_text()


def test_faults(tiny_llama_dir, doc):
    """Kills a scorer replica twice and the ingress once within 45 s of load on SQLite."""
    body = bench.faults.run(minutes=0.75, backends=("sqlite",), clients=2, base_dir=tiny_llama_dir, doc=doc,
                            max_note_tokens=64)
    assert "every accepted note persisted, none stored twice, none for another patient" in body, body
    assert body.count("pid ") == 3, body  # the three kills happened


def test_train_step(tiny_llama_dir, doc):
    body = bench.train_step.run(tiny_llama_dir, steps=2, notes_per_type=1, note_tokens=48, doc=doc)
    assert "shared note" in body and "one prompt per pair" in body and "% of peak" in body


def test_ceiling_rescores_the_datasets_own_labels_with_the_generators_draws(small_hospital, small_dataset, doc):
    body = bench.ceiling.run(small_hospital, small_dataset, n_resamples=50, doc=doc)
    assert "mortality 100.0%" in body and "los 100.0%" in body
    for task in ("readmission", "los", "denial"):
        row = next(line for line in body.splitlines() if line.startswith(f"| {task} |")).split(" | ")
        tfidf, seen, full = (float(cell.split(" ")[0]) for cell in row[3:6])
        assert 0.0 <= tfidf <= 1.0 and full > 0.65 and seen > 0.65  # the formula's own logits rank the outcomes
    assert "n/a (coded conditions)" in next(line for line in body.splitlines() if line.startswith("| cci |"))


def test_ceiling_refuses_another_hospitals_draws(small_hospital, small_dataset, tmp_path, doc):
    other = tmp_path / "other-fhir"
    other.mkdir()
    generation = json.loads((small_hospital / "generation.json").read_text())
    generation["spec"]["seed"] += 1
    (other / "generation.json").write_text(json.dumps(generation))
    with pytest.raises(RuntimeError, match="another hospital|never drawn"):
        bench.ceiling.run(other, small_dataset, n_resamples=10, doc=doc, tfidf=False)


def test_los_bin_probabilities_match_the_generators_rounding():
    """P(bin) from the normal CDF equals the share of draws that int(exp(x - 0.15)) puts in it."""
    from lang1ops.tasks import DEFAULT_CONTRACT

    task = DEFAULT_CONTRACT.task("los")
    rng = np.random.default_rng(0)
    for mean in (0.4, 1.3, 2.1):
        days = np.maximum(0, np.exp(rng.normal(mean, 0.6, 20_000) - 0.15).astype(int))
        drawn = np.bincount([task.bin_index(d) for d in days], minlength=4) / 20_000
        probs = bench.ceiling.los_bin_probs(task, np.array([mean]), 0.6)[0]
        assert probs.sum() == pytest.approx(1.0)
        assert np.abs(probs - drawn).max() < 0.015
