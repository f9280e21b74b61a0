"""The retraining loop's gate and bookkeeping on a small hospital (tiny model, heads)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from lang1ops.registry import Registry
from lang1ops.settings.drift_loop import DriftLoopSettings
from monitoring.history import MonitoringHistory
from monitoring.retraining import DatasetSource, RetrainingLoop, default_trainer
from serving.store import Store
from training.dataset import Dataset
from training.heads import EncodingCache

NAME = "lang1-ops"


def flipped(dataset: Dataset, out) -> Dataset:
    """The same notes with every label reversed: a model trained on it ranks backwards."""
    labels = dataset.labels.copy()
    n_classes = {t.name: t.n_classes for t in dataset.contract.tasks}
    labels["label"] = [n_classes[t] - 1 - y for t, y in zip(labels["task"], labels["label"], strict=True)]
    out.mkdir(parents=True)
    dataset.notes.to_parquet(out / "notes.parquet", index=False)
    labels.to_parquet(out / "labels.parquet", index=False)
    (out / "dataset.json").write_text((dataset.path / "dataset.json").read_text())
    return Dataset.load(out)


@pytest.fixture()
def loop_parts(small_dataset, small_hospital_base, tmp_path):
    settings = DriftLoopSettings(runs_dir=tmp_path / "runs", min_labeled_notes=50, gate_resamples=200,
                                 heads_layers=[1], max_train_notes=2000, cooldown_hours=24)
    registry = Registry(tmp_path / "registry")
    cache = EncodingCache(tmp_path / "cache.sqlite")
    trainer = default_trainer(settings, small_hospital_base, 128, NAME, cache)
    champion = registry.register(trainer(Dataset.load(small_dataset), tmp_path / "champion", {}), "test", "champion")
    registry.promote(NAME, champion.version, "test", "first", expected_champion="")
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    return settings, registry, cache, trainer, store, champion


def test_the_gate_refuses_a_deliberately_worse_candidate_and_says_why(loop_parts, small_dataset, small_hospital_base,
                                                                        tmp_path):
    settings, registry, cache, trainer, store, champion = loop_parts

    def worse(dataset, out_dir, lineage):
        return trainer(flipped(dataset, tmp_path / "flipped"), out_dir, lineage)

    history = MonitoringHistory(store)
    loop = RetrainingLoop(settings, store, registry, NAME, DatasetSource(small_dataset, "test"), worse,
                          base_fallback=small_hospital_base, cache=cache, history=history)
    result = loop.run_once(manual="test: a deliberately worse candidate")
    assert result.outcome == "refused", result.table
    assert result.decision["candidate_mean"] < result.decision["champion_mean"]
    assert registry.get(NAME, "champion").version == champion.version  # unchanged
    refusal = registry.audit(NAME)[-1]
    assert refusal["action"] == "refuse" and refusal["version"] == result.candidate
    assert "refused by the promotion gate" in refusal["reason"] and refusal["details"]["gate"]["accept"] is False
    assert registry.aliases(NAME)["challenger"] == result.candidate  # kept for inspection (shadow scoring)
    steps = [(e["step"], e["outcome"]) for e in history.events(result.cycle)]
    assert steps == [("trigger", "triggered"), ("pull", "ok"), ("train", "ok"), ("evaluate", "refuse"),
                     ("refuse", "refused")]
    assert "| mean |" in history.events(result.cycle)[3]["detail"]["table"]


def test_triggers_cooldown_and_minimum_labels(loop_parts, small_dataset, small_hospital_base):
    settings, registry, cache, trainer, store, champion = loop_parts
    history = MonitoringHistory(store)
    loop = RetrainingLoop(settings, store, registry, NAME, DatasetSource(small_dataset, "test"), trainer,
                          base_fallback=small_hospital_base, cache=cache, history=history)
    assert loop.run_once().outcome == "idle"  # nothing detected, nothing to do
    now = datetime.now(UTC)
    history.record_event("earlier", "train", "ok", time=now - timedelta(hours=1))
    history.record_drift(checked_at=now, window_start=now, window_end=now, window_by="scored_at", model_version="v0001",
                         n_current=300, n_reference=1000, detected=True, checks={"descriptors": {"detected": True}},
                         features={}, report_dir=None, duration_s=1.0)
    cooled = loop.run_once(now=now + timedelta(seconds=1))
    assert cooled.outcome == "cooldown" and [t.kind for t in cooled.triggers] == ["drift"]
    assert loop.run_once(now=now + timedelta(seconds=2)).outcome == "idle"  # the same drift run triggers once
    strict = RetrainingLoop(settings.model_copy(update={"min_labeled_notes": 10**6}), store, registry, NAME,
                            DatasetSource(small_dataset, "test"), trainer, history=history)
    assert strict.run_once(manual="test").outcome == "too-few-labels"
    assert registry.get(NAME, "champion").version == champion.version


def test_only_alerts_labelled_action_retrain_in_the_real_rules_trigger_retraining(tmp_path):
    """Every alert of monitoring/rules fires once, as Alertmanager would deliver it (the rule's
    own labels); exactly the `action: retrain` ones may start a training run."""
    import hashlib
    from pathlib import Path

    import yaml

    from monitoring.alerts import AlertLog

    rules = yaml.safe_load((Path(__file__).resolve().parents[2] / "monitoring/rules/lang1-ops.rules.yml").read_text())
    alerts = [r for group in rules["groups"] for r in group["rules"] if "alert" in r]
    now = datetime.now(UTC)
    store = Store(f"sqlite:///{tmp_path / 'store.sqlite'}")
    AlertLog(store).record({"version": "4", "status": "firing", "alerts": [
        {"status": "firing", "labels": {"alertname": rule["alert"], "task": "mortality", **rule.get("labels", {})},
         "startsAt": now.isoformat(), "fingerprint": hashlib.sha256(rule["alert"].encode()).hexdigest()[:16]}
        for rule in alerts]}, now=now)
    loop = RetrainingLoop(DriftLoopSettings(runs_dir=tmp_path), store, Registry(tmp_path / "registry"), NAME,
                          DatasetSource(tmp_path, "test"), trainer=None)
    triggered = {t.reason.split()[1] for t in loop.triggers(now) if t.kind == "alert"}
    expected = {r["alert"] for r in alerts if r.get("labels", {}).get("action") == "retrain"}
    assert expected and triggered == expected
    assert "Lang1OpsDriftCheckStale" not in triggered  # a stale check is an operations problem, not a drifted model


def test_the_loops_measurements_setting_needs_its_ngrams_setting():
    import pydantic

    with pytest.raises(pydantic.ValidationError, match="heads_measurements needs drift_loop.heads_ngrams"):
        DriftLoopSettings(heads_ngrams=False, heads_measurements=True)
    assert DriftLoopSettings(heads_measurements=True).heads_measurements
