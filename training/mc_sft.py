"""Multitask multiple-choice finetuning, the paper's method (its section 5.4).

Each labeled note becomes `note (right-truncated) + question + options + "Answer:"`; the loss
is the cross-entropy over the option letters' logits at the answer position, so training
and scoring read the same numbers. Tasks are mixed evenly in every batch; AdamW (0.9, 0.999,
eps 1e-5, weight decay 0.02), cosine decay without warmup, no gradient clipping, early
stopping on the validation micro-AUROC (mean over tasks) with patience, and a short
log-uniform learning-rate search over [1e-6, 1e-3] ranked by validation AUROC and loss.
Full finetuning or LoRA (r 8, alpha 16, dropout 0.05 on q_proj and v_proj by default).

`train_loop` is the one training loop: `train_mc` runs it in this process, and
training.distributed runs it on every Ray Train worker (the model then wrapped in DDP, each
worker taking its share of every batch).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from lang1ops.artifact import ArtifactManifest, Method, ModelKind
from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.prompts import PromptEncoder
from lang1ops.tasks import TaskContract
from serving.scorer import LoadedModel, MultitaskScorer, choose_dtype
from training.artifacts import remove_partial, start_artifact
from training.calibration import fit_calibrations
from training.dataset import Dataset
from training.evaluate import micro_auroc


@dataclass
class SftConfig:
    method: str = "lora"  # "full" | "lora"
    lr: float | None = None  # None: search it
    max_steps: int = 300
    batch_size: int = 8  # examples per optimizer step (before accumulation), tasks mixed evenly
    grad_accum: int = 1
    eval_every: int = 50
    patience: int = 3  # evaluations without improvement before stopping
    weight_decay: float = 0.02
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-5
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    max_note_tokens: int = 512
    tasks: list[str] | None = None
    max_examples: dict[str, int] = field(default_factory=dict)  # per split and task, e.g. {"train": 2000, "val": 300}
    search_trials: int = 5
    search_steps: int = 100
    search_range: tuple[float, float] = (1e-6, 1e-3)
    seed: int = 0
    dtype: str = "auto"  # bf16 autocast where the hardware has it
    device: str = "cpu"


@dataclass
class Example:
    ids: list[int]  # note ids + question suffix ids
    task: str
    label: int
    options: list[int]  # option-letter token ids of the task


@dataclass
class EvalPoint:
    step: int
    val_auroc: float
    val_loss: float
    per_task: dict[str, float]


@dataclass
class TrainResult:
    best: EvalPoint | None
    history: list[EvalPoint]
    steps: int
    stopped_early: bool
    lr: float
    search: list[dict]


def build_examples(dataset: Dataset, encoder: PromptEncoder, tasks: list[str], split: str, cap: int | None,
                   seed: int) -> dict[str, list[Example]]:
    out = {}
    for task in tasks:
        frame = dataset.task_frame(task, split)
        if cap and len(frame) > cap:
            frame = frame.sample(cap, random_state=seed)
        options = encoder.option_token_ids(task)
        out[task] = [Example(encoder.prompt_ids(text, task), task, int(label), options)
                     for text, label in zip(frame["text"], frame["label"], strict=True)]
    return out


class EvenTaskSampler:
    """Batches with the tasks mixed evenly: every batch cycles through the tasks, each task
    drawing from its own shuffled stream (reshuffled when exhausted), as the paper mixes tasks."""

    def __init__(self, examples: dict[str, list[Example]], batch_size: int, seed: int):
        self.tasks = [t for t, e in examples.items() if e]
        self.examples, self.batch_size = examples, batch_size
        self.rng = random.Random(seed)
        self.streams: dict[str, list[Example]] = {t: [] for t in self.tasks}
        self.offset = 0

    def _draw(self, task: str) -> Example:
        if not self.streams[task]:
            self.streams[task] = self.rng.sample(self.examples[task], len(self.examples[task]))
        return self.streams[task].pop()

    def next_batch(self) -> list[Example]:
        batch = [self._draw(self.tasks[(self.offset + i) % len(self.tasks)]) for i in range(self.batch_size)]
        self.offset = (self.offset + self.batch_size) % len(self.tasks)
        return batch


def collate(batch: list[Example], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Left-padded so the answer position is the last for every row; explicit position ids keep
    each prompt's positions identical to the unpadded ones the scorer uses."""
    width = max(len(e.ids) for e in batch)
    k = max(len(e.options) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    options = torch.zeros((len(batch), k), dtype=torch.long)
    valid = torch.zeros((len(batch), k), dtype=torch.bool)
    for row, e in enumerate(batch):
        ids[row, width - len(e.ids):] = torch.tensor(e.ids)
        mask[row, width - len(e.ids):] = 1
        options[row, : len(e.options)] = torch.tensor(e.options)
        valid[row, : len(e.options)] = True
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    labels = torch.tensor([e.label for e in batch])
    return {k_: v.to(device) for k_, v in dict(input_ids=ids, attention_mask=mask, position_ids=positions, options=options,
                                               valid=valid, labels=labels).items()}


def option_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy over the task's option letters at the answer (last) position. Calls the
    model's own forward (so DDP synchronises gradients) with logits for one position only."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                logits_to_keep=1, use_cache=False)
    last = out.logits[:, -1, :].float()  # (B, V)
    logits = last.gather(1, batch["options"]).masked_fill(~batch["valid"], float("-inf"))  # (B, k)
    return F.cross_entropy(logits, batch["labels"])


def autocast_for(config: SftConfig):
    dtype = choose_dtype(config.device, config.dtype)
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=torch.device(config.device).type, dtype=dtype)


def make_model(base_dir: Path, config: SftConfig) -> torch.nn.Module:
    model = load_causal_lm(base_dir, dtype=torch.float32).to(config.device)  # fp32 master weights
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        # LoRA's A matrices are drawn from torch's global generator: seed it, or a run's result
        # depends on whatever drew random numbers before it (a second lr_search chose another lr)
        torch.manual_seed(config.seed)
        model = get_peft_model(model, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                 lora_dropout=config.lora_dropout, target_modules=list(config.lora_targets),
                                                 task_type="CAUSAL_LM"))
    elif config.method != "full":
        raise ValueError(f"method must be 'full' or 'lora', not {config.method!r}")
    return model


@torch.no_grad()
def validation_probabilities(model: torch.nn.Module, encoder: PromptEncoder, contract: TaskContract,
                             val: dict[str, pd.DataFrame], config: SftConfig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """task -> (uncalibrated class probabilities, labels) of the validation notes, scored like serving scores."""
    inner = model.module if hasattr(model, "module") else model
    was_training = inner.training
    inner.eval()
    scorer = MultitaskScorer(LoadedModel(ModelKind.MC, contract, inner, encoder))
    out = {}
    with autocast_for(config):
        for task, frame in val.items():
            results, _ = scorer.score(frame["text"].tolist(), [[task]] * len(frame))
            out[task] = (np.stack([r[task] for r in results]), frame["label"].to_numpy())
    inner.train(was_training)
    return out


def evaluate_examples(model: torch.nn.Module, encoder: PromptEncoder, contract: TaskContract,
                      val: dict[str, pd.DataFrame], config: SftConfig) -> EvalPoint:
    """Validation micro-AUROC (mean over tasks) and option loss, scored like serving scores."""
    per_task, losses = {}, []
    for task, (probs, labels) in validation_probabilities(model, encoder, contract, val, config).items():
        per_task[task] = micro_auroc(labels, probs)
        losses.append(float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()))
    finite = [v for v in per_task.values() if math.isfinite(v)]
    return EvalPoint(0, float(np.mean(finite)) if finite else float("nan"), float(np.mean(losses)), per_task)


def train_loop(model: torch.nn.Module, train: dict[str, list[Example]], val: dict[str, pd.DataFrame],
               encoder: PromptEncoder, contract: TaskContract, config: SftConfig, lr: float, max_steps: int,
               is_main: bool = True, shard: tuple[int, int] = (0, 1),
               on_step: Callable[[int, float], None] | None = None,
               on_eval: Callable[[EvalPoint], None] | None = None,
               on_report: Callable[[int, EvalPoint | None], None] | None = None) -> tuple[TrainResult, dict | None]:
    """Train; returns the result and the best weights (trainable parameters only)."""
    torch.manual_seed(config.seed)
    rank, world = shard
    pad_id = encoder.tokenizer.pad_token_id
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_steps, eta_min=0.0)  # no warmup
    sampler = EvenTaskSampler(train, config.batch_size * world, config.seed)
    history: list[EvalPoint] = []
    best, best_state, since_best, stopped = None, None, 0, False
    model.train()
    step = 0
    for step in range(1, max_steps + 1):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for _ in range(config.grad_accum):
            batch = sampler.next_batch()[rank::world]  # every worker its share of the same global batch
            with autocast_for(config):
                loss = option_loss(model, collate(batch, pad_id, config.device)) / config.grad_accum
            loss.backward()
            total += float(loss.detach())
        optimizer.step()
        schedule.step()
        if on_step:
            on_step(step, total)
        if step % config.eval_every == 0 or step == max_steps:
            point = evaluate_examples(model, encoder, contract, val, config) if is_main else None
            if point is not None:
                point.step = step
                history.append(point)
                if on_eval:
                    on_eval(point)
                if best is None or point.val_auroc > best.val_auroc:
                    best, since_best = point, 0
                    best_state = trainable_state(model)
                else:
                    since_best += 1
            if on_report:  # every worker reports at every evaluation (Ray Train requires it)
                on_report(step, point)
            stop = torch.tensor([1 if (point is not None and since_best >= config.patience) else 0])
            if world > 1 and torch.distributed.is_initialized():
                torch.distributed.broadcast(stop, src=0)
            if stop.item():
                stopped = True
                break
    return TrainResult(best, history, step, stopped, lr, []), best_state


def trainable_state(model: torch.nn.Module) -> dict:
    inner = model.module if hasattr(model, "module") else model
    return {k: v.detach().cpu().clone() for k, v in inner.named_parameters() if v.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict) -> None:
    inner = model.module if hasattr(model, "module") else model
    params = dict(inner.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def lr_search(base_dir: Path, train: dict[str, list[Example]], val: dict[str, pd.DataFrame], encoder: PromptEncoder,
              contract: TaskContract, config: SftConfig) -> tuple[float, list[dict]]:
    """A few short trials at log-uniform learning rates; best by validation AUROC and loss
    (the sum of the two ranks, ties to the higher AUROC), as the paper selects its trials."""
    rng = np.random.default_rng(config.seed)
    low, high = np.log(config.search_range[0]), np.log(config.search_range[1])
    trials = []
    for lr in np.exp(rng.uniform(low, high, config.search_trials)):
        model = make_model(base_dir, config)
        trial_config = replace(config, eval_every=config.search_steps, patience=10**6)
        result, _ = train_loop(model, train, val, encoder, contract, trial_config, float(lr), config.search_steps)
        point = result.history[-1]
        trials.append({"lr": float(lr), "val_auroc": point.val_auroc, "val_loss": point.val_loss})
    by_auroc = sorted(range(len(trials)), key=lambda i: -np.nan_to_num(trials[i]["val_auroc"], nan=-1))
    by_loss = sorted(range(len(trials)), key=lambda i: trials[i]["val_loss"])
    rank = {i: by_auroc.index(i) + by_loss.index(i) for i in range(len(trials))}
    best = min(rank, key=lambda i: (rank[i], by_auroc.index(i)))
    return trials[best]["lr"], trials


def prepare(dataset: Dataset, base_dir: Path, config: SftConfig):
    contract = dataset.contract
    tasks = config.tasks or contract.names
    encoder = PromptEncoder(load_tokenizer(base_dir), contract, config.max_note_tokens)
    train = build_examples(dataset, encoder, tasks, "train", config.max_examples.get("train"), config.seed)
    val = {}
    for task in tasks:
        frame = dataset.task_frame(task, "val")
        cap = config.max_examples.get("val")
        val[task] = frame.sample(cap, random_state=config.seed) if cap and len(frame) > cap else frame
    task_contract = contract.model_copy(update={"tasks": [contract.task(t) for t in tasks]})
    return task_contract, encoder, train, val


def train_mc(dataset: Dataset, base_dir: Path, out_dir: Path, config: SftConfig, name: str = "lang1-ops",
             on_step=None, on_eval=None, lineage: dict | None = None) -> tuple[Path, TrainResult]:
    started = time.perf_counter()
    contract, encoder, train, val = prepare(dataset, base_dir, config)
    search: list[dict] = []
    lr = config.lr
    if lr is None:
        lr, search = lr_search(base_dir, train, val, encoder, contract, config)
    model = make_model(base_dir, config)
    result, best_state = train_loop(model, train, val, encoder, contract, config, lr, config.max_steps,
                                    on_step=on_step, on_eval=on_eval)
    result.search = search
    if best_state is not None:
        load_trainable_state(model, best_state)
    calibration = fit_calibrations(validation_probabilities(model, encoder, contract, val, config))
    write_mc_artifact(model, dataset, base_dir, out_dir, config, contract, result, name, lineage,
                      wall_time_s=time.perf_counter() - started, calibration=calibration)
    return Path(out_dir), result


def write_mc_artifact(model: torch.nn.Module, dataset: Dataset, base_dir: Path, out_dir: Path, config: SftConfig,
                      contract: TaskContract, result: TrainResult, name: str, lineage: dict | None,
                      wall_time_s: float, calibration: dict | None = None) -> None:
    method = Method.LORA if config.method == "lora" else Method.FULL
    hyper = {k: v for k, v in asdict(config).items() if k not in ("device",)}
    hyper |= {"lr": result.lr, "steps": result.steps, "stopped_early": result.stopped_early, "lr_search": result.search,
              "best": asdict(result.best) if result.best else None}
    try:
        start_artifact(out_dir, name=name, kind=ModelKind.MC, method=method, base_dir=base_dir, contract=contract,
                       max_note_tokens=config.max_note_tokens, hyperparameters=hyper, lineage=lineage,
                       data={"dataset": str(dataset.path), "windows": dataset.info.get("windows")})
        inner = model.module if hasattr(model, "module") else model
        if method == Method.LORA:
            inner.save_pretrained(str(Path(out_dir) / "adapter"))
        else:
            inner.save_pretrained(str(Path(out_dir) / "weights"), safe_serialization=True)
    except BaseException:
        remove_partial(out_dir)
        raise
    manifest = ArtifactManifest.load(out_dir)
    manifest.wall_time_s = round(wall_time_s, 1)
    manifest.calibration = calibration or {}
    manifest.save(out_dir)
