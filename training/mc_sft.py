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

import hashlib
import json
import math
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lang1ops.artifact import ArtifactManifest, Method, ModelKind, weights_sha256
from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.metrics import auroc, micro_auroc
from lang1ops.prompts import PromptEncoder
from lang1ops.scorer import LoadedModel, MultitaskScorer, choose_dtype
from lang1ops.tasks import TaskContract
from training.artifacts import remove_partial, start_artifact
from training.calibration import fit_calibrations
from training.dataset import Dataset
from training.mc_batches import (
    EvenTaskSampler,
    Example,
    NoteItem,
    build_examples,
    build_note_items,
    collate,
    collate_notes,
    is_shared,
    option_loss,
    sampler_batch_size,
    shared_option_loss,
)


@dataclass
class SftConfig:
    method: str = "full"  # "full" (the paper's) | "lora" (its exception for bases too large to train whole)
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
    time_limit_s: float | None = None  # stop at a step boundary after this long, checkpointed, to resume later
    # A fixed budget instead: the time limit ends training the way early stopping does (the best
    # weights so far kept, the artifact written) and no checkpoint is saved (on a lent GPU the
    # full-finetuning state is 2 GB a save, and nothing resumes there later)
    finish_at_time_limit: bool = False
    # encode each training note once and ask it every question it is labeled for (the scorer's
    # branching, with gradients): the same loss, about half the tokens per example here
    shared_notes: bool = True


@dataclass
class EvalPoint:
    step: int
    val_auroc: float  # mean over tasks of per_task: the paper's early-stopping signal
    val_loss: float
    per_task: dict[str, float]  # micro-AUROC (binary tasks: AUROC)
    # the evaluation's one-vs-rest macro AUROC and the labels' class counts, beside the paper's
    # signal: micro-averaging pools a multi-class task's classes, so a model that has learned only
    # the class priors already scores high on LOS and CCI (a run at 0.916 on CCI was at chance
    # one-vs-rest, docs/training.md), and a validation sample with two deaths steers nothing
    per_task_ovr: dict[str, float] = field(default_factory=dict)
    events: dict[str, list[int]] = field(default_factory=dict)


@dataclass
class TrainResult:
    best: EvalPoint | None
    history: list[EvalPoint]
    steps: int
    stopped_early: bool
    lr: float
    search: list[dict]
    interrupted: bool = False  # stopped by the time limit or Ctrl-C, checkpointed: run again to resume
    examples_seen: int = 0  # (note, question) pairs trained on, over every resumed part


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
    per_task, per_task_ovr, events, losses = {}, {}, {}, []
    for task, (probs, labels) in validation_probabilities(model, encoder, contract, val, config).items():
        per_task[task] = micro_auroc(labels, probs)
        per_task_ovr[task] = auroc(labels, probs)
        events[task] = np.bincount(labels, minlength=probs.shape[1]).tolist()
        losses.append(float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()))
    finite = [v for v in per_task.values() if math.isfinite(v)]
    return EvalPoint(0, float(np.mean(finite)) if finite else float("nan"), float(np.mean(losses)), per_task,
                     per_task_ovr, events)


def train_loop(model: torch.nn.Module, train: dict[str, list[Example]], val: dict[str, pd.DataFrame],
               encoder: PromptEncoder, contract: TaskContract, config: SftConfig, lr: float, max_steps: int,
               is_main: bool = True, shard: tuple[int, int] = (0, 1),
               on_step: Callable[[int, float], None] | None = None,
               on_eval: Callable[[EvalPoint], None] | None = None,
               on_report: Callable[[int, EvalPoint | None], None] | None = None,
               schedule_steps: int | None = None, checkpoint: Checkpoint | None = None,
               on_start: Callable[[int], None] | None = None) -> tuple[TrainResult, dict | None]:
    """Train; returns the result and the best weights (trainable parameters only).

    `schedule_steps` is the cosine schedule's length when it differs from the steps run (a
    learning-rate trial runs the first steps of the real run's schedule). With `checkpoint`,
    a run starts where the checkpoint stands, saves one at every evaluation, and stops at a
    step boundary once `config.time_limit_s` has passed or on Ctrl-C, saving one first;
    `TrainResult.interrupted` then says so, and the same call later resumes without losing a
    step (weights, optimizer, schedule, task streams and random state all restored)."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    rank, world = shard
    if world > 1 and is_shared(train):
        raise ValueError("shared-note batches run the decoder directly, outside DDP: build examples for several workers")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=schedule_steps or max_steps, eta_min=0.0)
    sampler = EvenTaskSampler(train, sampler_batch_size(train, config.batch_size, len(contract.tasks)) * world, config.seed)
    history: list[EvalPoint] = []
    best, best_state, since_best, stopped = None, None, 0, False
    first, seen = 1, 0
    if checkpoint is not None and checkpoint.exists():
        saved = checkpoint.load()
        load_trainable_state(model, saved["trainable"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        sampler.restore(saved["sampler"])
        torch.set_rng_state(saved["torch_rng"])
        history = [EvalPoint(**p) for p in saved["history"]]
        best = EvalPoint(**saved["best"]) if saved["best"] else None
        best_state, since_best, first = saved["best_state"], saved["since_best"], saved["step"] + 1
        seen = saved.get("examples_seen", 0)
        if history and on_eval:  # a resumed run's progress shows its last validation AUROC, not nothing
            on_eval(history[-1])
    if on_start:  # where the run starts, from the checkpoint already loaded (not a second 2 GB read)
        on_start(first - 1)

    def save(step: int) -> None:
        if checkpoint is not None and is_main:
            checkpoint.save({"step": step, "trainable": trainable_state(model), "optimizer": optimizer.state_dict(),
                             "schedule": schedule.state_dict(), "sampler": sampler.state(),
                             "torch_rng": torch.get_rng_state(), "history": [asdict(p) for p in history],
                             "best": asdict(best) if best else None, "best_state": best_state,
                             "since_best": since_best, "examples_seen": seen})

    def _one_step(step: int) -> tuple[TrainResult, dict | None] | None:
        """Train step `step` (and evaluate when due); a result when the run ends here."""
        nonlocal best, best_state, since_best, stopped, seen
        loss, examples = _train_step(model, sampler, config, encoder, rank, world, optimizer, schedule)
        seen += examples * world
        if on_step:
            on_step(step, loss)
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
                return TrainResult(best, history, step, stopped, lr, [], examples_seen=seen), best_state
            save(step)
        out_of_time = config.time_limit_s is not None and time.monotonic() - started > config.time_limit_s
        if out_of_time and config.finish_at_time_limit and step < max_steps:
            if not history or history[-1].step != step:  # the weights of this step are judged too
                point = evaluate_examples(model, encoder, contract, val, config)
                point.step = step
                history.append(point)
                if on_eval:
                    on_eval(point)
                if best is None or point.val_auroc > best.val_auroc:
                    best, best_state = point, trainable_state(model)
            return TrainResult(best, history, step, False, lr, [], examples_seen=seen), best_state
        if (out_of_time or interrupted.raised) and step < max_steps:
            save(step)
            return TrainResult(best, history, step, False, lr, [], interrupted=True, examples_seen=seen), best_state
        return None

    model.train()
    step = first - 1
    with _deferred_interrupts(checkpoint is not None) as interrupted:
        for step in range(first, max_steps + 1):
            result = _one_step(step)
            if result is not None:
                return result
    return TrainResult(best, history, step, stopped, lr, [], examples_seen=seen), best_state


class _Interrupts:
    raised = False


@contextmanager
def _deferred_interrupts(active: bool):
    """Ctrl-C or SIGTERM (a pod being preempted) during a checkpointed run is noted, not raised:
    the step under way finishes, a checkpoint is written at that step boundary and the run
    returns `interrupted`. A second signal interrupts at once. Elsewhere (a worker thread, no
    checkpoint) signals act as usual."""
    state = _Interrupts()
    if not active or threading.current_thread() is not threading.main_thread():
        yield state
        return

    def note(signum, frame):
        if state.raised:
            raise KeyboardInterrupt
        state.raised = True

    previous = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _train_step(model, sampler: EvenTaskSampler, config: SftConfig, encoder: PromptEncoder, rank: int, world: int,
                optimizer, schedule) -> tuple[float, int]:
    """One optimizer step (with gradient accumulation); the step's mean loss and the examples
    (note, question pairs) this worker trained on."""
    optimizer.zero_grad(set_to_none=True)
    total, examples = 0.0, 0
    for _ in range(config.grad_accum):
        batch = sampler.next_batch()[rank::world]  # every worker its share of the same global batch
        with autocast_for(config):
            if batch and isinstance(batch[0], NoteItem):
                loss = shared_option_loss(model, collate_notes(batch, encoder, config.device), encoder)
                examples += sum(len(item.labels) for item in batch)
            else:
                loss = option_loss(model, collate(batch, encoder.tokenizer.pad_token_id, config.device))
                examples += len(batch)
            loss = loss / config.grad_accum
        loss.backward()
        total += float(loss.detach())
    optimizer.step()
    schedule.step()
    return total, examples


class Checkpoint:
    """One training run's resumable state in one file, written atomically (a crash mid-write
    leaves the previous one), tied to the run's settings: a checkpoint of another run (other
    learning rate, steps, data caps, base) is refused rather than silently continued."""

    def __init__(self, path: Path, run_fingerprint: str, on_save: Callable[[int], None] | None = None):
        self.path, self.fingerprint, self.on_save = Path(path), run_fingerprint, on_save

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        saved = torch.load(self.path, map_location="cpu", weights_only=False)  # our own file, never a download
        if saved.get("fingerprint") != self.fingerprint:
            raise ValueError(f"{self.path} is the checkpoint of another training run (other settings or data); "
                             "remove it to start over, or resume with the settings it was made with")
        return saved

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".partial")
        torch.save({**state, "fingerprint": self.fingerprint}, partial)
        partial.replace(self.path)
        if self.on_save:
            self.on_save(state["step"])

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


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
        trial_config = replace(config, eval_every=config.search_steps, patience=10**6, time_limit_s=None)
        # the first steps of the real run's schedule, not a schedule compressed into the trial
        result, _ = train_loop(model, train, val, encoder, contract, trial_config, float(lr), config.search_steps,
                               schedule_steps=config.max_steps)
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
    build = build_note_items if config.shared_notes else build_examples
    train = build(dataset, encoder, tasks, "train", config.max_examples.get("train"), config.seed)
    val = {}
    for task in tasks:
        frame = dataset.task_frame(task, "val")
        cap = config.max_examples.get("val")
        val[task] = frame.sample(cap, random_state=config.seed) if cap and len(frame) > cap else frame
    task_contract = contract.model_copy(update={"tasks": [contract.task(t) for t in tasks]})
    return task_contract, encoder, train, val


def checkpoint_path(out_dir: Path) -> Path:
    """Beside the artifact directory, not in it: a failed artifact write removes that directory."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.checkpoint.pt"


def train_mc(dataset: Dataset, base_dir: Path, out_dir: Path, config: SftConfig, name: str = "lang1-ops",
             on_step=None, on_eval=None, lineage: dict | None = None, on_start=None) -> tuple[Path, TrainResult]:
    """Search the learning rate (unless given), train, calibrate and write the artifact. With
    `config.time_limit_s` a long run stops in time with a checkpoint beside `out_dir`
    (`TrainResult.interrupted`, no artifact yet); the same call resumes it. `on_start(step)`
    says where the run starts (0, or the checkpoint's step)."""
    started = time.perf_counter()
    contract, encoder, train, val = prepare(dataset, base_dir, config)
    progress_file = checkpoint_path(out_dir).with_suffix(".json")
    resumed = json.loads(progress_file.read_text()) if progress_file.exists() else {}
    search: list[dict] = resumed.get("search", [])
    lr = config.lr or resumed.get("lr")
    if lr is None:
        lr, search = lr_search(base_dir, train, val, encoder, contract, config)
        progress_file.parent.mkdir(parents=True, exist_ok=True)
        progress_file.write_text(json.dumps({"lr": lr, "search": search}))  # a resumed run does not search again
    fingerprint = hashlib.sha256(json.dumps([asdict(replace(config, lr=lr, time_limit_s=None, device="")),
                                             str(dataset.path), weights_sha256(base_dir)], default=str).encode()).hexdigest()
    prior_s = resumed.get("elapsed_s", 0.0)

    def note_progress(step: int) -> None:
        # at every checkpoint, not only at a clean stop: a part that is killed (machine restart,
        # OOM) still counts the time up to its last checkpoint in the artifact's wall time
        progress_file.write_text(json.dumps({"lr": lr, "search": search, "step": step,
                                             "elapsed_s": prior_s + time.perf_counter() - started}))

    checkpoint = None if config.finish_at_time_limit else Checkpoint(checkpoint_path(out_dir), fingerprint,
                                                                      on_save=note_progress)
    model = make_model(base_dir, config)
    result, best_state = train_loop(model, train, val, encoder, contract, config, lr, config.max_steps,
                                    on_step=on_step, on_eval=on_eval, checkpoint=checkpoint, on_start=on_start)
    result.search = search
    if result.interrupted:  # the checkpoint just saved noted the elapsed time
        return Path(out_dir), result
    if best_state is not None:
        load_trainable_state(model, best_state)
    calibration = fit_calibrations(validation_probabilities(model, encoder, contract, val, config))
    write_mc_artifact(model, dataset, base_dir, out_dir, config, contract, result, name, lineage,
                      wall_time_s=prior_s + time.perf_counter() - started, calibration=calibration)
    if checkpoint is not None:
        checkpoint.remove()
    progress_file.unlink(missing_ok=True)
    return Path(out_dir), result


def write_mc_artifact(model: torch.nn.Module, dataset: Dataset, base_dir: Path, out_dir: Path, config: SftConfig,
                      contract: TaskContract, result: TrainResult, name: str, lineage: dict | None,
                      wall_time_s: float, calibration: dict | None = None) -> None:
    method = Method.LORA if config.method == "lora" else Method.FULL
    hyper = {k: v for k, v in asdict(config).items() if k not in ("device",)}
    hyper |= {"lr": result.lr, "steps": result.steps, "stopped_early": result.stopped_early, "lr_search": result.search,
              "best": asdict(result.best) if result.best else None,
              "examples_seen": result.examples_seen}
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
