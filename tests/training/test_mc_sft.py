"""Multiple-choice finetuning on the tiny random Llama."""

from __future__ import annotations

import json
import math
import os
import signal

import numpy as np
import pandas as pd
import pytest
import torch

from lang1ops.artifact import ArtifactManifest
from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.prompts import PromptEncoder
from lang1ops.scorer import LoadedModel, MultitaskScorer, load_model
from lang1ops.tasks import DEFAULT_CONTRACT
from training.dataset import Dataset
from training.mc_batches import (
    EvenTaskSampler,
    Example,
    NoteItem,
    collate,
    collate_notes,
    option_loss,
    shared_option_loss,
)
from training.mc_sft import SftConfig, lr_search, make_model, prepare, train_loop, write_mc_artifact


@pytest.fixture(scope="module")
def encoder(tiny_llama_dir):
    return PromptEncoder(load_tokenizer(tiny_llama_dir), DEFAULT_CONTRACT, 64)


def toy(encoder: PromptEncoder, n: int, seed: int) -> tuple[list[Example], pd.DataFrame]:
    """Mortality is 'yes' exactly when the note mentions sepsis: learnable from the text."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.random() < 0.5)
        filler = " ".join(rng.choice(["patient", "admitted", "with", "pain", "stable", "history"], size=rng.integers(3, 12)))
        texts.append(f"{filler} {'septic shock sepsis' if label else 'knee replacement'} {filler}")
        labels.append(label)
    examples = [Example(encoder.prompt_ids(t, "mortality"), "mortality", y, encoder.option_token_ids("mortality"))
                for t, y in zip(texts, labels, strict=True)]
    return examples, pd.DataFrame({"text": texts, "label": labels})


def test_padded_batch_loss_equals_unpadded_per_example_loss(tiny_llama_dir, encoder):
    model = load_causal_lm(tiny_llama_dir)
    notes = ["short note", "a much longer note about chest pain and shortness of breath for three days " * 3]
    batch = [Example(encoder.prompt_ids(n, t), t, y, encoder.option_token_ids(t))
             for n, t, y in zip(notes, ["los", "mortality"], [2, 1], strict=True)]
    with torch.no_grad():
        together = option_loss(model, collate(batch, encoder.tokenizer.pad_token_id, "cpu"))
        by_hand = []
        for e in batch:
            logits = model(input_ids=torch.tensor([e.ids])).logits[0, -1, e.options]
            by_hand.append(-torch.log_softmax(logits, -1)[e.label])
    assert float(together) == pytest.approx(float(torch.stack(by_hand).mean()), abs=1e-5)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_shared_note_loss_and_gradients_equal_separate_prompts(method, tiny_llama_dir, encoder):
    """Each note encoded once and asked its questions from the kept keys/values trains on the same
    loss, with the same gradients, as every (note, question) pair run as its own prompt."""
    notes = ["short note", "a much longer note about chest pain and shortness of breath for three days " * 3,
             "discharged home on aspirin"]
    items = [NoteItem(encoder.encode_note(notes[0]), "hp", {"mortality": 1, "los": 2, "denial": 0}),
             NoteItem(encoder.encode_note(notes[1]), "hp", {"mortality": 0, "cci": 3}),  # no los or denial label
             NoteItem(encoder.encode_note(notes[2]), "ds", {"readmission": 1})]
    pairs = [Example(encoder.prompt_ids(n, t), t, y, encoder.option_token_ids(t))
             for n, item in zip(notes, items, strict=True) for t, y in item.labels.items()]

    def loss_and_grads(compute):
        torch.manual_seed(0)
        model = make_model(tiny_llama_dir, SftConfig(method=method, lora_dropout=0.0))
        loss = compute(model)
        loss.backward()
        return float(loss.detach()), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}

    shared, shared_grads = loss_and_grads(lambda m: shared_option_loss(m, collate_notes(items, encoder, "cpu"), encoder))
    separate, separate_grads = loss_and_grads(lambda m: option_loss(m, collate(pairs, encoder.tokenizer.pad_token_id, "cpu")))
    assert shared == pytest.approx(separate, abs=1e-5)
    for name, grad in separate_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-4, msg=name)


def test_shared_notes_train_on_the_same_examples_with_tasks_mixed_evenly(small_dataset, tiny_llama_dir):
    dataset = Dataset.load(small_dataset)
    _, _, by_note, _ = prepare(dataset, tiny_llama_dir, SftConfig(max_note_tokens=32, shared_notes=True))
    _, _, by_example, _ = prepare(dataset, tiny_llama_dir, SftConfig(max_note_tokens=32, shared_notes=False))
    pairs = sorted((t, y) for items in by_note.values() for item in items for t, y in item.labels.items())
    assert pairs == sorted((e.task, e.label) for examples in by_example.values() for e in examples)
    sampler = EvenTaskSampler(by_note, batch_size=2 * len(by_note), seed=0)
    for _ in range(5):
        groups = [item.group for item in sampler.next_batch()]
        assert sorted(groups) == sorted(list(by_note) * 2)  # every note type in every batch, equally


def test_batches_mix_tasks_evenly():
    examples = {t: [Example([1], t, 0, [1, 2])] * 3 for t in ("a", "b", "c", "d", "e")}
    sampler = EvenTaskSampler(examples, batch_size=8, seed=0)
    counts = {t: 0 for t in examples}
    for _ in range(50):
        for e in sampler.next_batch():
            counts[e.task] += 1
    assert max(counts.values()) - min(counts.values()) <= 1


def test_loss_decreases_on_a_learnable_toy(tiny_llama_dir, encoder):
    train, _ = toy(encoder, 64, seed=1)
    _, val = toy(encoder, 40, seed=2)
    config = SftConfig(method="full", batch_size=8, eval_every=10, patience=100, max_note_tokens=64, seed=0)
    model = make_model(tiny_llama_dir, config)
    losses = []
    result, _ = train_loop(model, {"mortality": train}, {"mortality": val}, encoder, DEFAULT_CONTRACT, config, lr=3e-3,
                           max_steps=40, on_step=lambda step, loss: losses.append(loss))
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert result.best.val_auroc > 0.9


def test_early_stopping_stops(tiny_llama_dir, encoder):
    train, val = toy(encoder, 16, seed=3)
    config = SftConfig(method="full", batch_size=4, eval_every=1, patience=2, max_note_tokens=64)
    model = make_model(tiny_llama_dir, config)
    # lr 0: nothing changes, so the first evaluation stays the best and patience runs out
    result, _ = train_loop(model, {"mortality": train}, {"mortality": val}, encoder, DEFAULT_CONTRACT, config, lr=0.0,
                           max_steps=50)
    assert result.stopped_early and result.steps == 3 and result.best.step == 1


@pytest.mark.parametrize("method", ["full", "lora"])
def test_save_reload_and_score_identically(method, small_dataset, tiny_llama_dir, tmp_path):
    dataset = Dataset.load(small_dataset)
    config = SftConfig(method=method, lr=1e-3, max_steps=4, eval_every=2, batch_size=5, max_note_tokens=64,
                       max_examples={"train": 20, "val": 12})
    contract, encoder, train, val = prepare(dataset, tiny_llama_dir, config)
    model = make_model(tiny_llama_dir, config)
    result, _ = train_loop(model, train, val, encoder, contract, config, config.lr, config.max_steps)
    write_mc_artifact(model, dataset, tiny_llama_dir, tmp_path / "artifact", config, contract, result, "test", None, 1.0)
    notes = dataset.notes["text"].head(4).tolist()
    model.eval()
    before, _ = MultitaskScorer(LoadedModel("mc", contract, model, encoder)).score(notes)
    after, _ = MultitaskScorer(load_model(tmp_path / "artifact", dtype="float32")).score(notes)
    for b, a in zip(before, after, strict=True):
        for task in contract.names:
            np.testing.assert_allclose(a[task], b[task], atol=1e-5)
    if method == "lora":
        assert (tmp_path / "artifact" / "adapter" / "adapter_model.safetensors").exists()
        assert not (tmp_path / "artifact" / "weights").exists()
        # the finetuned model differs from its base: LoRA actually trained
        base = MultitaskScorer(LoadedModel("mc", contract, load_causal_lm(tiny_llama_dir), encoder)).score(notes)[0]
        assert any(not np.allclose(base[i][t], after[i][t], atol=1e-6) for i in range(4) for t in contract.names)


def test_lr_search_stays_in_range_and_is_reproducible(small_dataset, tiny_llama_dir):
    dataset = Dataset.load(small_dataset)
    config = SftConfig(method="lora", search_trials=3, search_steps=2, batch_size=5, max_note_tokens=32,
                       max_examples={"train": 10, "val": 10}, tasks=["mortality", "los"])
    torch.manual_seed(1234)  # whatever ran before must not matter: LoRA init is seeded by the config
    contract, encoder, train, val = prepare(dataset, tiny_llama_dir, config)
    lr, trials = lr_search(tiny_llama_dir, train, val, encoder, contract, config)
    again, _ = lr_search(tiny_llama_dir, train, val, encoder, contract, config)
    assert len(trials) == 3 and lr in [t["lr"] for t in trials] and lr == again
    assert all(1e-6 <= t["lr"] <= 1e-3 and math.isfinite(t["val_loss"]) for t in trials)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_an_interrupted_run_resumes_without_losing_a_step(method, small_dataset, tiny_llama_dir, tmp_path):
    """Ctrl-C during step 3 of 6, then the same call again: the same weights, history and best
    point as one uninterrupted run, the artifact written only at the end."""
    from training.mc_sft import checkpoint_path, train_mc

    dataset = Dataset.load(small_dataset)
    config = SftConfig(method=method, lr=1e-3, max_steps=6, eval_every=2, patience=100, batch_size=4,
                       max_note_tokens=48, max_examples={"train": 16, "val": 12}, tasks=["mortality", "los"])
    whole, whole_result = train_mc(dataset, tiny_llama_dir, tmp_path / "whole", config)

    parts = tmp_path / "parts"
    seen: list[int] = []

    def ctrl_c_during_step_3(step: int, loss: float) -> None:
        seen.append(step)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C: noted, the step finishes, then a checkpoint

    _, stopped = train_mc(dataset, tiny_llama_dir, parts, config, on_step=ctrl_c_during_step_3)
    assert stopped.interrupted and stopped.steps == 3
    assert checkpoint_path(parts).exists() and not (parts / "artifact.json").exists()
    noted = json.loads(checkpoint_path(parts).with_suffix(".json").read_text())  # written with every checkpoint
    assert noted["step"] == 3 and noted["elapsed_s"] > 0
    starts: list[int] = []
    evals: list[int] = []
    _, result = train_mc(dataset, tiny_llama_dir, parts, config, on_step=lambda step, loss: seen.append(step),
                         on_start=starts.append, on_eval=lambda point: evals.append(point.step))
    assert starts == [3] and seen == [1, 2, 3, 4, 5, 6]  # no step lost, none repeated
    assert evals == [2, 4, 6]  # the progress bar shows step 2's validation AUROC from the start of the resumed part
    assert not checkpoint_path(parts).exists() and (parts / "artifact.json").exists()
    assert ArtifactManifest.load(parts).wall_time_s >= round(noted["elapsed_s"], 1)  # both parts counted
    assert [(p.step, p.val_auroc) for p in result.history] == [(p.step, p.val_auroc) for p in whole_result.history]
    last = result.history[-1]  # beside the paper's micro-AUROC: the evaluation's one-vs-rest AUROC and the class counts
    assert set(last.per_task_ovr) == set(last.events) == {"mortality", "los"}
    assert len(last.events["los"]) == 4 and sum(last.events["mortality"]) == sum(last.events["los"])
    notes = dataset.notes["text"].head(3).tolist()
    a, _ = MultitaskScorer(load_model(whole, dtype="float32")).score(notes)
    b, _ = MultitaskScorer(load_model(parts, dtype="float32")).score(notes)
    for x, y in zip(a, b, strict=True):
        for task in ("mortality", "los"):
            np.testing.assert_allclose(x[task], y[task], atol=1e-6)


def test_a_time_limit_stops_with_a_checkpoint_and_a_mismatched_run_is_refused(small_dataset, tiny_llama_dir, tmp_path):
    from training.mc_sft import checkpoint_path, train_mc

    dataset = Dataset.load(small_dataset)
    config = SftConfig(method="full", lr=1e-3, max_steps=5, eval_every=5, batch_size=4, max_note_tokens=48,
                       max_examples={"train": 12, "val": 10}, tasks=["mortality"], time_limit_s=0.0)
    out, result = train_mc(dataset, tiny_llama_dir, tmp_path / "run", config)
    assert result.interrupted and result.steps == 1 and checkpoint_path(out).exists()
    other = SftConfig(**{**config.__dict__, "lr": 5e-4})
    with pytest.raises(ValueError, match="checkpoint of another training run"):
        train_mc(dataset, tiny_llama_dir, tmp_path / "run", other)


def test_a_fixed_time_budget_finishes_with_the_best_weights_and_saves_no_checkpoint(small_dataset, tiny_llama_dir,
                                                                                    tmp_path):
    """`finish_at_time_limit`: the limit ends training like early stopping: the step it stops at
    is evaluated, the artifact is written and loadable, and no 2 GB checkpoint is ever saved."""
    from training.mc_sft import checkpoint_path, train_mc

    dataset = Dataset.load(small_dataset)
    config = SftConfig(method="full", lr=1e-3, max_steps=50, eval_every=25, batch_size=4, max_note_tokens=48,
                       max_examples={"train": 12, "val": 10}, tasks=["mortality"], time_limit_s=0.0,
                       finish_at_time_limit=True)
    out, result = train_mc(dataset, tiny_llama_dir, tmp_path / "run", config)
    assert not result.interrupted and result.steps == 1 and [p.step for p in result.history] == [1]
    assert result.best is result.history[0] and not checkpoint_path(out).exists()
    assert ArtifactManifest.load(out).hyperparameters["steps"] == 1
    [probabilities], _ = MultitaskScorer(load_model(out)).score(dataset.notes["text"].head(1).tolist())
    assert set(probabilities) == {"mortality"}
