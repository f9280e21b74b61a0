"""Turning scores into the one CDS card a service answers with: the indicator from the configured
thresholds, a summary under 140 characters (most urgent first), a Markdown detail saying which
notes were read and what is missing, the model card link and the override reasons."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from urllib.parse import quote

from integration.cds_hooks.gather import CardNote, Gathered, _kind_name
from integration.cds_hooks.services import CdsService
from lang1ops.settings.cds_hooks import CdsHooksSettings, IndicatorThresholds
from lang1ops.tasks import TaskContract, TaskSpec

OVERRIDE_REASON_SYSTEM = "http://lang1-ops.org/fhir/CodeSystem/cds-override-reason"
INDICATOR_ORDER = {"info": 0, "warning": 1, "critical": 2}
SUMMARY_MAX = 139  # CDS Hooks: summary under 140 characters


def _event_probability(task: TaskSpec, probs: list[float], thresholds: IndicatorThresholds | None) -> float:
    if task.binary:
        return float(probs[task.positive_option])
    upper = thresholds.upper_classes if thresholds and thresholds.upper_classes else [task.n_classes - 1]
    return float(sum(probs[i] for i in upper if i < len(probs)))


def _indicator(p: float, thresholds: IndicatorThresholds | None) -> str:
    if thresholds is None:
        return "info"
    return "critical" if p >= thresholds.critical else "warning" if p >= thresholds.warning else "info"


def _pct(p: float) -> str:
    return f"{100 * p:.1f}%" if p < 0.1 else f"{100 * p:.0f}%"


@dataclass
class TaskResult:
    task: TaskSpec
    probs: list[float]
    event_p: float
    indicator: str
    note: CardNote

    def phrase(self) -> str:
        if self.task.binary:
            return f"{self.task.title} {_pct(self.event_p)}"
        top = max(range(len(self.probs)), key=lambda i: self.probs[i])
        return f"{self.task.title}: {self.task.options[top].text} ({_pct(self.probs[top])})"


def build_card(service: CdsService, contract: TaskContract, gathered: Gathered, settings: CdsHooksSettings) -> dict:
    results = []
    for task in service.tasks_of(contract):
        note = gathered.scored.get(task.note_type)
        if note is None or task.name not in note.probabilities:
            continue
        probs = note.probabilities[task.name]
        thresholds = settings.thresholds.get(task.name)
        p = _event_probability(task, probs, thresholds)
        results.append(TaskResult(task, probs, p, _indicator(p, thresholds), note))
    missing_tasks = [t for t in service.tasks_of(contract) if t.name not in {r.task.name for r in results}]
    # most urgent first, so a cut summary drops the least important
    results.sort(key=lambda r: (-INDICATOR_ORDER[r.indicator], -r.event_p))
    indicator = max((r.indicator for r in results), key=INDICATOR_ORDER.__getitem__, default="info")
    summary = _summary([r.phrase() for r in results])
    models = sorted({(r.note.model_name, r.note.model_version) for r in results})
    name, version = models[0] if models else ("lang1-ops", "unknown")
    card = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "indicator": indicator,
        "detail": _detail(results, missing_tasks, gathered, settings, models, contract),
        "source": {"label": settings.source_label,
                   "url": settings.model_card_url.format(model_name=quote(name, safe=""),
                                                         model_version=quote(version, safe="")),
                   "topic": {"system": "http://lang1-ops.org/fhir/CodeSystem/cds-topic", "code": service.id,
                             "display": service.title}},
        "overrideReasons": [{"system": OVERRIDE_REASON_SYSTEM, "code": r.code, "display": r.display}
                            for r in settings.override_reasons],
        "links": [{"label": "Model card: what the scores mean and how they were validated", "type": "absolute",
                   "url": settings.model_card_url.format(model_name=quote(name, safe=""),
                                                         model_version=quote(version, safe=""))}],
    }
    return card


def _summary(phrases: list[str]) -> str:
    if not phrases:
        return "Lang1 risk not available: no admission H&P or discharge summary found"
    summary = "Lang1 risk: " + phrases[0]
    for phrase in phrases[1:]:
        if len(summary) + 2 + len(phrase) > SUMMARY_MAX:
            break
        summary += "; " + phrase
    return summary[:SUMMARY_MAX]



def _detail(results: list[TaskResult], missing: list[TaskSpec], gathered: Gathered, settings: CdsHooksSettings,
            models: list[tuple[str, str]], contract: TaskContract) -> str:
    lines = []
    binary = [r for r in results if r.task.binary]
    if binary:
        lines += ["| Prediction | Horizon | Probability | Level |", "|---|---|---|---|"]
        for r in binary:
            t = settings.thresholds.get(r.task.name)
            level = r.indicator + (f" (warning ≥ {_pct(t.warning)}, critical ≥ {_pct(t.critical)})" if t else "")
            lines.append(f"| {r.task.title} | {r.task.horizon} | **{_pct(r.event_p)}** | {level} |")
        lines.append("")
    for r in (r for r in results if not r.task.binary):
        classes = " · ".join(f"{o.text}: {_pct(p)}" for o, p in zip(r.task.options, r.probs, strict=False))
        lines.append(f"**{r.task.title}** ({r.task.horizon}): {classes} — level {r.indicator}")
        lines.append("")
    for kind, note in gathered.scored.items():
        origin = "stored score" if note.replayed else "scored now"
        when = note.date.date().isoformat() if note.date else "undated"
        lines.append(f"- Read from the {_kind_name(contract, kind)} {note.reference} ({when}); {origin}.")
    for task in missing:
        why = gathered.missing.get(task.note_type, f"no {_kind_name(contract, task.note_type)} found")
        lines.append(f"- {task.title}: not available ({why}).")
    if models:
        lines.append("- Model: " + ", ".join(f"{n} version {v}" for n, v in models) + ".")
    lines += ["", "Each figure is the model's probability of the outcome over the stated horizon, estimated from the "
              "text of one note by a clinical language model. It is an operational estimate for planning "
              "(discharge planning, case management, utilisation review), not a diagnosis; the model card says how "
              "the model was trained and how well it is calibrated on this hospital's patients."]
    return "\n".join(lines)
