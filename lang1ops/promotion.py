"""The promotion gate: whether a candidate may replace the champion.

`promotion_gate` compares a candidate with the champion on the newest labeled window (pure
function, no I/O). A candidate replaces the champion only when no task's AUROC is worse than the
champion's beyond the paired bootstrap 95% CI of the difference and the mean AUROC over tasks is
not lower. When a model has no champion yet (its first version) there is nothing to compare with:
callers do not call the gate and promote the first version directly.

The gate only decides; the registry (`lang1ops.registry`) records. Callers put the decision
(`GateDecision.to_dict()`, `GateDecision.table()`) in the details of `Registry.promote` (with
`expected_champion`, a compare-and-swap) or of `Registry.refuse`, so the audit log keeps the
gate's comparisons and reasons.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np

from lang1ops.metrics import auroc, paired_bootstrap_difference


def _none_if_nan(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass
class TaskComparison:
    task: str
    n: int
    champion_auroc: float
    candidate_auroc: float
    difference: tuple[float, float, float]  # (estimate, low, high) of candidate - champion, paired bootstrap 95% CI
    worse_beyond_ci: bool  # high < 0

    def to_dict(self) -> dict:
        estimate, low, high = self.difference
        return {
            "task": self.task,
            "n": int(self.n),
            "champion_auroc": _none_if_nan(self.champion_auroc),
            "candidate_auroc": _none_if_nan(self.candidate_auroc),
            "difference": {"estimate": _none_if_nan(estimate), "low": _none_if_nan(low),
                           "high": _none_if_nan(high)},
            "worse_beyond_ci": bool(self.worse_beyond_ci),
        }


@dataclass
class GateDecision:
    accept: bool
    reasons: list[str]
    comparisons: list[TaskComparison] = field(default_factory=list)
    champion_mean: float = float("nan")
    candidate_mean: float = float("nan")

    def to_dict(self) -> dict:
        """JSON-ready (NaN becomes None), for the audit details."""
        return {
            "accept": bool(self.accept),
            "reasons": list(self.reasons),
            "champion_mean": _none_if_nan(self.champion_mean),
            "candidate_mean": _none_if_nan(self.candidate_mean),
            "comparisons": [c.to_dict() for c in self.comparisons],
        }

    def table(self) -> str:
        """A Markdown table: one row per task and the mean."""

        def f(x: float, spec: str = ".3f") -> str:
            return "n/a" if x is None or math.isnan(x) else format(x, spec)

        rows = [
            "| task | n | champion AUROC | candidate AUROC | difference [95% CI] | worse beyond CI |",
            "|---|---:|---:|---:|---|---|",
        ]
        for c in self.comparisons:
            estimate, low, high = c.difference
            rows.append(f"| {c.task} | {c.n} | {f(c.champion_auroc)} | {f(c.candidate_auroc)} | "
                        f"{f(estimate, '+.3f')} [{f(low, '+.3f')}, {f(high, '+.3f')}] | "
                        f"{'yes' if c.worse_beyond_ci else 'no'} |")
        rows.append(f"| mean | | {f(self.champion_mean, '.4f')} | {f(self.candidate_mean, '.4f')} | "
                    f"{f(self.candidate_mean - self.champion_mean, '+.4f')} | |")
        return "\n".join(rows)


def _fmt_diff(d: float) -> str:
    return f"{d:+.1e}" if d != 0 and abs(d) < 1e-4 else f"{d:+.4f}"


def promotion_gate(labels: dict[str, np.ndarray], champion_probs: dict[str, np.ndarray],
                   candidate_probs: dict[str, np.ndarray], n_resamples: int = 1000, seed: int = 0) -> GateDecision:
    """Decide whether a candidate may replace the champion, on the newest labeled window.

    `labels[task]` are integer labels (n,), `champion_probs[task]` and `candidate_probs[task]` the
    two models' class probabilities (n, k) on the same notes (binary tasks: k=2). Accept only when
    no task's AUROC is worse than the champion's beyond the 95% paired bootstrap CI (the CI of
    candidate - champion lies entirely below 0) and the mean AUROC over tasks is not lower.

    The bootstrap resamples notes jointly for both models, skips resamples with a single class and
    takes the 2.5 and 97.5 percentiles; each task gets its own numpy Generator seeded from `seed`
    and the task name, so a task's interval does not depend on the other tasks. A task whose
    window has a single class has no AUROC: the gate cannot show that the candidate is not worse
    there and refuses. A model with no champion yet is not gated (callers promote it directly).
    """
    if not labels:
        raise ValueError("promotion_gate needs at least one task")
    tasks = list(labels)
    for what, probs in (("champion_probs", champion_probs), ("candidate_probs", candidate_probs)):
        missing = [t for t in tasks if t not in probs]
        extra = [t for t in probs if t not in labels]
        if missing or extra:
            raise ValueError(f"{what} does not match the labeled tasks {tasks}: "
                             f"missing {missing or 'none'}, not labeled {extra or 'none'}")
    if n_resamples < 1:
        raise ValueError("n_resamples must be at least 1")

    # Validate every task before the (slow) bootstrap of any.
    arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for task in tasks:
        y = np.asarray(labels[task])
        champion = np.asarray(champion_probs[task], dtype=np.float64)
        candidate = np.asarray(candidate_probs[task], dtype=np.float64)
        if y.ndim != 1:
            raise ValueError(f"{task}: labels must be one-dimensional, got shape {y.shape}")
        for what, p in (("champion", champion), ("candidate", candidate)):
            if p.ndim != 2 or p.shape[0] != len(y):
                raise ValueError(f"{task}: {what} probabilities must have shape ({len(y)}, k), got {p.shape}")
        if champion.shape != candidate.shape:
            raise ValueError(f"{task}: champion probabilities {champion.shape} and candidate "
                             f"{candidate.shape} differ in shape")
        arrays[task] = (y, champion, candidate)

    comparisons: list[TaskComparison] = []
    reasons: list[str] = []
    for task, (y, champion, candidate) in arrays.items():
        champion_auc = auroc(y, champion)
        candidate_auc = auroc(y, candidate)
        nan = float("nan")
        if math.isnan(champion_auc) or math.isnan(candidate_auc):
            comparisons.append(TaskComparison(task, len(y), champion_auc, candidate_auc, (nan, nan, nan), False))
            reasons.append(f"{task}: the labeled window ({len(y)} notes) has a single class, so AUROC is "
                           f"undefined and the candidate cannot be shown not to be worse")
            continue
        # the vectorised paired bootstrap of training.evaluate: both models on the same resamples
        interval = paired_bootstrap_difference(y, champion, candidate, n_resamples,
                                               seed=(seed * 1_000_003 + zlib.crc32(task.encode("utf-8"))) % 2**32)
        estimate = candidate_auc - champion_auc
        if not (math.isfinite(interval.low) and math.isfinite(interval.high)):
            comparisons.append(TaskComparison(task, len(y), champion_auc, candidate_auc, (estimate, nan, nan),
                                              False))
            reasons.append(f"{task}: every bootstrap resample of the {len(y)} notes had a single class; "
                           f"no confidence interval for the AUROC difference")
            continue
        low, high = interval.low, interval.high
        worse = high < 0
        comparisons.append(TaskComparison(task, len(y), champion_auc, candidate_auc, (estimate, low, high), worse))
        if worse:
            reasons.append(f"{task}: candidate AUROC {candidate_auc:.3f} vs champion {champion_auc:.3f}, "
                           f"difference {estimate:+.3f} with 95% CI [{low:+.3f}, {high:+.3f}] entirely below 0 "
                           f"(n={len(y)}, {n_resamples} bootstrap resamples)")

    defined = [c for c in comparisons if not (math.isnan(c.champion_auroc) or math.isnan(c.candidate_auroc))]
    champion_mean = float(np.mean([c.champion_auroc for c in defined])) if defined else float("nan")
    candidate_mean = float(np.mean([c.candidate_auroc for c in defined])) if defined else float("nan")
    if defined and candidate_mean < champion_mean:
        reasons.append(f"mean AUROC over {len(defined)} tasks: candidate {candidate_mean:.4f} is lower than "
                       f"champion {champion_mean:.4f} (difference {_fmt_diff(candidate_mean - champion_mean)})")
    accept = not reasons
    if accept:
        reasons.append(f"no task's AUROC is worse than the champion's beyond the 95% bootstrap CI, and the mean "
                       f"AUROC over {len(defined)} tasks is not lower (candidate {candidate_mean:.4f}, "
                       f"champion {champion_mean:.4f})")
    return GateDecision(accept=accept, reasons=reasons, comparisons=comparisons, champion_mean=champion_mean,
                        candidate_mean=candidate_mean)
