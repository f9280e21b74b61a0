"""`make demo`'s champion is chosen by the promotion gate among three real candidates, not by a flag."""

from __future__ import annotations

import pytest

from app import demo
from lang1ops.registry import Registry
from lang1ops.settings import get_settings


@pytest.fixture
def demo_settings(settings_env, monkeypatch):
    monkeypatch.setattr(demo, "DEMO_HEADS_LAYERS", (2,))  # the tiny Llama has two layers
    return get_settings()


def test_the_gate_judges_each_later_candidate_and_the_audit_says_why(demo_settings, small_dataset, tmp_path):
    version = demo.demo_champion(small_dataset, tmp_path / "demo")
    registry = Registry(demo_settings.registry_dir)
    versions = {v.version: v for v in registry.versions(demo_settings.model_name)}
    assert set(versions) == {"v0001", "v0002", "v0003"}
    hyper = {v: versions[v].manifest["hyperparameters"] for v in versions}
    assert hyper["v0001"]["ngrams"] is None
    assert hyper["v0002"]["ngrams"]["terms"] > 0 and hyper["v0002"]["ngrams"]["measurement_bins"] is None
    assert hyper["v0003"]["ngrams"]["measurement_bins"] > 0
    events = registry.audit(demo_settings.model_name)
    # the champion of the moment: v0001 first, then whichever the gate's rule keeps
    champion = "v0001"
    for candidate in ("v0002", "v0003"):
        judged = [e for e in events if e.get("version") == candidate and e["action"] in ("promote", "refuse")]
        assert len(judged) == 1 and judged[0]["details"]["evaluation_split"] == demo.DEMO_GATE_SPLIT
        gate = judged[0]["details"]["gate"]
        assert (judged[0]["action"] == "promote") == gate["accept"]
        assert gate["candidate_mean"] is not None and len(gate["comparisons"]) == 5
        champion = candidate if gate["accept"] else champion
    assert version == champion
    # run again on the same dataset: the chosen champion is kept, nothing retrained
    assert demo.demo_champion(small_dataset, tmp_path / "demo") == version
    assert len(list(registry.versions(demo_settings.model_name))) == 3
    # the champion's card shows the other candidates beside it
    assert demo.demo_candidates(small_dataset, version) == [v for v in ("v0001", "v0002", "v0003") if v != version]
