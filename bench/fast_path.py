"""Which fast model (the same-day retraining path) should heads be? Candidates measured on the
same notes: pooled states of the frozen base at several depths (mean, max, last token), the same
with the note's n-grams beside them, and TF-IDF + logistic regression on the same training notes
and on the whole training split (the baseline at its best).

Every model gets the same training notes (a seeded sample, stated in the output) except the
"TF-IDF, full train split" row; C is chosen on the same validation notes for every model; AUROC
[95% CI, 1,000 resamples] on the latest temporal split with events per class beside it.
Encodings are cached in `var/bench/fast_path/` (by base weights, note text and token budget),
so a rerun only refits. Writes docs/benchmarks.md section "fast-path" and prints it.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from bench.report import machine, write_section
from lang1ops.artifact import weights_sha256
from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.metrics import auroc
from lang1ops.progress import progress_bar
from lang1ops.prompts import PromptEncoder
from lang1ops.scorer import choose_dtype, decoder_parts, pad_batch
from lang1ops.settings import get_settings
from training.dataset import Dataset
from training.evaluate import bootstrap_auroc

COMMAND = "python -m bench fast_path"
POOLS = ("mean", "max", "last")
C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
TFIDF_C_GRID = (0.3, 1.0, 3.0, 10.0)
DENSE_WEIGHTS = (0.25, 0.5, 1.0)  # 0 too: the "TF-IDF, same training notes" row


class _Stop(Exception):
    pass


@torch.inference_mode()
def encode_pools(model: torch.nn.Module, prompt: PromptEncoder, texts: list[str], layers: list[int],
                 batch_notes: int = 8, on_batch=None) -> dict[tuple[int, str], np.ndarray]:
    """(layer, pooling) -> (n, H): mean and max over the note's tokens and the last token's state,
    one forward pass that stops at the deepest layer."""
    decoder, _ = decoder_parts(model)
    tok = prompt.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = [prompt.encode_note(t) for t in texts]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    hidden = decoder.config.hidden_size
    out = {(layer, pool): np.zeros((len(texts), hidden), np.float32) for layer in layers for pool in POOLS}
    deepest = max(layers)
    states: dict[int, torch.Tensor] = {}

    def grab(_module, _inputs, output, layer: int) -> None:
        states[layer] = (output[0] if isinstance(output, tuple) else output).to(torch.float32)
        if layer == deepest:
            raise _Stop

    handles = [decoder.layers[layer - 1].register_forward_hook(lambda mod, i, o, layer=layer: grab(mod, i, o, layer))
               for layer in layers]
    try:
        for start in range(0, len(order), batch_notes):
            rows = order[start : start + batch_notes]
            batch, mask = pad_batch([ids[i] for i in rows], pad, next(model.parameters()).device)
            try:
                decoder(input_ids=batch, attention_mask=mask, use_cache=False)
            except _Stop:
                pass
            last, m = mask.sum(1) - 1, mask.unsqueeze(-1).to(torch.float32)
            for layer, h in states.items():
                out[(layer, "mean")][rows] = ((h * m).sum(1) / m.sum(1).clamp(min=1)).numpy()
                out[(layer, "max")][rows] = h.masked_fill(m == 0, float("-inf")).amax(1).numpy()
                out[(layer, "last")][rows] = h[torch.arange(len(rows)), last].numpy()
            if on_batch:
                on_batch(len(rows))
    finally:
        for handle in handles:
            handle.remove()
    return out


def sample(dataset: Dataset, split: str, note_types: dict[str, int], seed: int) -> pd.DataFrame:
    """Distinct labeled notes of `split`: up to `note_types[type]` of each note type, seeded."""
    ids = dataset.labels.loc[dataset.labels["split"] == split, "note_id"].unique()
    notes = dataset.notes[dataset.notes["note_id"].isin(ids)]
    parts = []
    for note_type, cap in note_types.items():
        of_type = notes[notes["note_type"] == note_type]
        parts.append(of_type if len(of_type) <= cap else of_type.sample(cap, random_state=seed))
    return pd.concat(parts).sort_index()


def _fit_lr_scored(x_tr, y_tr, x_va, y_va, n_classes: int, grid: tuple[float, ...], seed: int = 0):
    """(validation AUROC, model) of the C in `grid` with the best validation AUROC."""
    if len(np.unique(y_tr)) < 2:
        raise ValueError("a training sample with one class: raise the note caps")
    best = None
    for c in grid:
        clf = LogisticRegression(C=c, max_iter=3000, random_state=seed).fit(x_tr, y_tr)
        score = auroc(y_va, _proba(clf, x_va, n_classes))
        if best is None or (np.isfinite(score) and not score <= best[0]):
            best = (score, clf)
    return best


def _fit_lr(x_tr, y_tr, x_va, y_va, n_classes: int, grid: tuple[float, ...], seed: int = 0):
    return _fit_lr_scored(x_tr, y_tr, x_va, y_va, n_classes, grid, seed)[1]


def _proba(clf: LogisticRegression, x, n_classes: int) -> np.ndarray:
    probs = np.zeros((x.shape[0], n_classes))
    probs[:, clf.classes_] = clf.predict_proba(x)
    return probs


def run(dataset_dir: Path | None = None, layers: tuple[int, ...] = (4, 8), train: dict[str, int] | None = None,
        val: dict[str, int] | None = None, test: dict[str, int] | None = None, test_split: str | None = None,
        max_note_tokens: int = 512, base_dir: Path | None = None, doc: Path | None = None, seed: int = 0,
        n_resamples: int = 1000, cache_dir: Path = Path("var/bench/fast_path"), section: str = "fast-path") -> str:
    """`section` names the docs/benchmarks.md section: one per hospital (the second hospital's
    run writes its own beside the demo hospital's)."""
    settings = get_settings()
    dataset = Dataset.load(Path(dataset_dir or Path("var/demo/dataset")))
    base = Path(base_dir or settings.model.base_model_dir)
    # default: every training and validation note (the whole split, as TF-IDF gets it)
    train = train or {"admission_hp": 10**6, "discharge_summary": 10**6}
    val = val or {"admission_hp": 10**6, "discharge_summary": 10**6}
    splits = sorted(s for s in dataset.labels["split"].unique() if s.startswith("temporal"))
    test_split = test_split or splits[-1]
    test = test or {"admission_hp": 1500, "discharge_summary": 500}
    notes = {"train": sample(dataset, "train", train, seed), "val": sample(dataset, "val", val, seed),
             test_split: sample(dataset, test_split, test, seed)}
    every = pd.concat(notes.values()).drop_duplicates("note_id")

    model = load_causal_lm(base, dtype=choose_dtype("cpu", "auto"))
    prompt = PromptEncoder(load_tokenizer(base), dataset.contract, max_note_tokens)
    key = hashlib.sha256(f"{weights_sha256(base)}:{max_note_tokens}:{model.dtype}:{sorted(layers)}".encode()
                         + "".join(every["text_sha256"]).encode()).hexdigest()[:16]
    cache = Path(cache_dir) / f"{key}.npz"
    started = time.perf_counter()
    if cache.exists():
        stored = np.load(cache)
        vectors = {(int(k.split(":")[0]), k.split(":")[1]): stored[k] for k in stored.files}
        encode_s = None
    else:
        with progress_bar() as progress:
            bar = progress.add_task(f"Encoding {len(every):,} notes (layers {', '.join(map(str, layers))})", total=len(every))
            vectors = encode_pools(model, prompt, every["text"].tolist(), list(layers),
                                   on_batch=lambda n: progress.advance(bar, n))
        encode_s = time.perf_counter() - started
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **{f"{layer}:{pool}": v for (layer, pool), v in vectors.items()})
    row = {n: i for i, n in enumerate(every["note_id"])}

    tasks = dataset.contract.names
    frames = {(s, t): dataset.task_frame(t, s).merge(notes[s][["note_id"]], on="note_id") for s in notes for t in tasks}
    full_train = {t: dataset.task_frame(t, "train") for t in tasks}

    def rows_of(split, task):
        return np.array([row[n] for n in frames[(split, task)]["note_id"]], dtype=int)

    candidates: dict[str, dict] = {}
    fit_seconds: dict[str, float] = {}
    weighted: dict[int, dict[float, tuple]] = {}  # layer -> dense weight -> (val AUROC, test probs, fit s)
    chosen_weights: dict[int, dict[str, float]] = {}

    def record(name: str, task: str, probs: np.ndarray, seconds: float) -> None:
        candidates.setdefault(name, {})[task] = probs
        fit_seconds[name] = fit_seconds.get(name, 0.0) + seconds

    # n-gram features of the same training notes (fitted on them), reused by the hybrid rows
    clock = time.perf_counter()
    vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=3, max_features=50_000, sublinear_tf=True)
    vectorizer.fit(notes["train"]["text"])
    grams = {s: vectorizer.transform(notes[s]["text"]) for s in notes}
    gram_row = {s: {n: i for i, n in enumerate(notes[s]["note_id"])} for s in notes}
    tfidf_features_s = time.perf_counter() - clock

    def grams_of(split, task):
        return grams[split][[gram_row[split][n] for n in frames[(split, task)]["note_id"]]]

    for task in tasks:
        k = dataset.contract.task(task).n_classes
        y = {s: frames[(s, task)]["label"].to_numpy() for s in notes}
        for layer in layers:
            for pool in (*POOLS, "mean+max"):
                clock = time.perf_counter()
                x = (np.hstack([vectors[(layer, "mean")], vectors[(layer, "max")]]) if pool == "mean+max"
                     else vectors[(layer, pool)])
                tr = rows_of("train", task)
                mean, scale = x[tr].mean(0), x[tr].std(0) + 1e-6
                z = {s: (x[rows_of(s, task)] - mean) / scale for s in notes}
                clf = _fit_lr(z["train"], y["train"], z["val"], y["val"], k, C_GRID, seed)
                record(f"layer {layer} {pool} pool", task, _proba(clf, z[test_split], k), time.perf_counter() - clock)
                if pool == "mean":
                    # the hybrid: the same pooled state with the note's n-grams beside it, one model; the
                    # pooled block scaled by each of DENSE_WEIGHTS (1: rows about unit length, like the TF-IDF
                    # rows beside them). A smaller weight is a stronger penalty on the dense block alone.
                    for weight in DENSE_WEIGHTS:
                        clock = time.perf_counter()
                        hz = {s: sp.hstack([sp.csr_matrix(z[s] * weight / np.sqrt(x.shape[1])),
                                            grams_of(s, task)]).tocsr() for s in notes}
                        score, clf = _fit_lr_scored(hz["train"], y["train"], hz["val"], y["val"], k, TFIDF_C_GRID, seed)
                        probs, seconds = _proba(clf, hz[test_split], k), time.perf_counter() - clock
                        weighted.setdefault(layer, {})[weight] = (score, probs, seconds)
                        if weight == 1.0:
                            record(f"layer {layer} mean pool + n-grams", task, probs, seconds)
        clock = time.perf_counter()
        score, clf = _fit_lr_scored(grams_of("train", task), y["train"], grams_of("val", task), y["val"], k,
                                    TFIDF_C_GRID, seed)
        probs = _proba(clf, grams_of(test_split, task), k)
        record("TF-IDF, same training notes", task, probs, time.perf_counter() - clock)
        for layer, by_weight in weighted.items():
            # the dense block's weight chosen on validation, 0 (n-grams alone) among the choices
            by_weight[0.0] = (score, probs, 0.0)
            chosen = max(by_weight, key=lambda w: np.nan_to_num(by_weight[w][0], nan=-1.0))
            chosen_weights.setdefault(layer, {})[task] = chosen
            record(f"layer {layer} mean pool + n-grams, dense weight chosen on validation", task, by_weight[chosen][1],
                   sum(fit[2] for fit in by_weight.values()))
        weighted.clear()
        clock = time.perf_counter()
        full = TfidfVectorizer(ngram_range=(1, 2), min_df=3, max_features=50_000, sublinear_tf=True)
        x_full = full.fit_transform(full_train[task]["text"])
        clf = _fit_lr(x_full, full_train[task]["label"].to_numpy(), full.transform(frames[("val", task)]["text"]),
                      y["val"], k, TFIDF_C_GRID, seed)
        record("TF-IDF, full train split", task, _proba(clf, full.transform(frames[(test_split, task)]["text"]), k),
               time.perf_counter() - clock)

    header = "| model | " + " | ".join(tasks) + " | mean | fit s |"
    lines = [header, "|---" * (len(tasks) + 3) + "|"]
    means = {}
    for name, by_task in candidates.items():
        cells, estimates = [], []
        for task in tasks:
            interval = bootstrap_auroc(frames[(test_split, task)]["label"].to_numpy(), by_task[task],
                                       n_resamples=n_resamples, seed=seed)
            estimates.append(interval.estimate)
            cells.append(f"{interval.estimate:.3f} [{interval.low:.3f}, {interval.high:.3f}]")
        means[name] = float(np.nanmean(estimates))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {means[name]:.3f} | {fit_seconds[name]:.0f} |")
    events = []
    for task in tasks:
        counts = np.bincount(frames[(test_split, task)]["label"], minlength=dataset.contract.task(task).n_classes)
        events.append(f"{task} {counts[1] if len(counts) == 2 else '/'.join(map(str, counts))}")
    sizes = {s: {t: len(frames[(s, t)]) for t in tasks} for s in notes}
    best = max(means, key=means.get)
    command = COMMAND if tuple(layers) == (4, 8) and section == "fast-path" else \
        f'python -c "from bench.fast_path import run; run(layers={tuple(layers)}, section={section!r})"'
    hospital = Path(dataset.path).parent.name  # the hospital's work directory, e.g. var/lakeside
    body = f"""## Fast-path candidates (heads on the frozen base){'' if section == 'fast-path' else f': {hospital}'}

Command: `{command}` on `{dataset.path}`; SmolLM2-135M-Instruct base, {max_note_tokens}-token notes.
Machine: {machine()}.

Training notes per task (the same for every row except the last): {sizes['train']}
(the full training split: {{{', '.join(f"'{t}': {len(full_train[t])}" for t in tasks)}}}). Validation notes per task, used to
choose C for every row: {sizes['val']}. AUROC [95% CI, {n_resamples:,} resamples] on {test_split},
{len(every):,} distinct notes encoded once ({'read from the cache' if encode_s is None else f'{encode_s / 60:.1f} min, {encode_s / len(every):.3f} s per note'}); events
(positives, or notes per class) on the test sample: {'; '.join(events)}. "fit s": seconds to fit the
row's five models (C search included; the n-gram vocabulary, {tfidf_features_s:.0f} s, shared).

{chr(10).join(lines)}

Dense weights chosen on validation (0: n-grams alone): {'; '.join(f"layer {layer}: {weights}" for layer, weights in chosen_weights.items())}.

Best mean AUROC: {best} ({means[best]:.3f}).
"""
    write_section(section, body, doc)
    return body
