"""lang1ops.registry: versions, aliases, audit, compare-and-swap across processes (the promotion
gate's own tests are in test_promotion.py)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from lang1ops.promotion import promotion_gate
from lang1ops.registry import (
    ModelVersion,
    PromotionConflict,
    Registry,
    content_hash,
)
from tests.lang1ops.test_promotion import gate_data

NAME = "lang1-ops-test"


def make_artifact(parent: Path, tag: str, name: str = NAME) -> Path:
    """A small artifact directory: manifest, weights, tokenizer/, plots/, metrics and a model card."""
    d = parent / f"artifact-{tag}"
    (d / "tokenizer").mkdir(parents=True)
    (d / "plots" / "roc").mkdir(parents=True)
    (d / "artifact.json").write_text(json.dumps({"name": name, "kind": "lang1-finetune", "created": tag,
                                                 "base_model": "smollm2-135m"}))
    (d / "model.safetensors").write_bytes(os.urandom(4096) + tag.encode())
    (d / "tokenizer" / "tokenizer.json").write_text(json.dumps({"vocab": {"a": 0, "b": 1}}))
    (d / "metrics.json").write_text(json.dumps({"mortality": {"auroc": 0.86}}))
    (d / "model_card.md").write_text(f"# {name} {tag}\n")
    (d / "plots" / "roc" / "mortality.png").write_bytes(b"\x89PNG fake " + tag.encode())
    return d


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "registry")


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- versions


def test_register_list_get_latest(registry: Registry, tmp_path: Path) -> None:
    assert registry.names() == []
    assert registry.versions(NAME) == []
    a1, a2 = make_artifact(tmp_path, "one"), make_artifact(tmp_path, "two")

    v1 = registry.register(a1, actor="trainer", reason="nightly")
    v2 = registry.register(a2, actor="trainer")
    assert isinstance(v1, ModelVersion)
    assert (v1.name, v1.version, v2.version) == (NAME, "v0001", "v0002")
    assert v1.path == registry.root / NAME / "versions" / "v0001"
    assert v1.manifest["created"] == "one" and v2.manifest["kind"] == "lang1-finetune"
    assert registry.names() == [NAME]
    assert [v.version for v in registry.versions(NAME)] == ["v0001", "v0002"]

    # The stored copy is the artifact plus registry.json, whose hash matches the artifact's files.
    stored = files_of(v1.path)
    meta = json.loads(stored.pop("registry.json"))
    assert stored == files_of(a1)
    assert meta["content_hash"] == v1.content_hash == content_hash(a1)
    assert (meta["version"], meta["files"], meta["actor"]) == ("v0001", 6, "trainer")
    assert v1.content_hash != v2.content_hash

    assert registry.get(NAME, "latest") == v2
    assert registry.get(NAME, "v0001") == v1
    assert registry.verify(NAME, "v0001") and registry.verify(NAME, "latest")
    # A fresh Registry on the same root (another process, another host) sees the same state.
    assert Registry(registry.root).get(NAME, "latest") == v2


def test_get_errors_are_clear(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="no model named 'nope'.*models: none"):
        registry.get("nope", "latest")
    registry.register(make_artifact(tmp_path, "one"), actor="trainer")
    with pytest.raises(KeyError, match=f"no model named 'nope'.*models: {NAME}"):
        registry.get("nope", "latest")
    with pytest.raises(KeyError, match="has no version 'v0007' \\(versions: v0001\\)"):
        registry.get(NAME, "v0007")
    with pytest.raises(KeyError, match="has no champion"):
        registry.get(NAME, "champion")
    with pytest.raises(KeyError, match="unknown ref 'best'"):
        registry.get(NAME, "best")


def test_register_rejects_bad_artifacts(registry: Registry, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no artifact.json"):
        registry.register(empty, actor="trainer")
    nameless = make_artifact(tmp_path, "nameless")
    (nameless / "artifact.json").write_text(json.dumps({"kind": "lang1-finetune"}))
    with pytest.raises(ValueError, match="no 'name'"):
        registry.register(nameless, actor="trainer")
    bad_name = make_artifact(tmp_path, "bad", name="../escape")
    with pytest.raises(ValueError, match="invalid model name"):
        registry.register(bad_name, actor="trainer")
    reserved = make_artifact(tmp_path, "reserved")
    (reserved / "registry.json").write_text("{}")
    with pytest.raises(ValueError, match="registry.json"):
        registry.register(reserved, actor="trainer")
    with pytest.raises(ValueError, match="actor"):
        registry.register(make_artifact(tmp_path, "ok"), actor="")
    assert registry.names() == []


@pytest.mark.parametrize("change", ["modify", "add", "delete", "rename"])
def test_verify_detects_changed_files(registry: Registry, tmp_path: Path, change: str) -> None:
    mv = registry.register(make_artifact(tmp_path, "one"), actor="trainer")
    assert registry.verify(NAME, "v0001")
    weights = mv.path / "model.safetensors"
    assert not os.stat(weights).st_mode & 0o222  # stored files are read-only
    if change == "modify":
        weights.chmod(0o644)
        data = bytearray(weights.read_bytes())
        data[100] ^= 0xFF
        weights.write_bytes(bytes(data))
    elif change == "add":
        (mv.path / "plots" / "extra.png").write_bytes(b"x")
    elif change == "delete":
        (mv.path / "model_card.md").unlink()
    else:
        (mv.path / "metrics.json").rename(mv.path / "metrics2.json")
    assert not registry.verify(NAME, "v0001")


def test_failed_copy_leaves_no_version(registry: Registry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry.register(make_artifact(tmp_path, "one"), actor="trainer")
    real_copy2 = shutil.copy2
    copied: list[str] = []

    def failing_copy2(src, dst, *args, **kwargs):
        if len(copied) == 3:
            raise OSError(28, "No space left on device (simulated)")
        copied.append(str(src))
        return real_copy2(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copy2", failing_copy2)
    with pytest.raises(OSError, match="simulated"):
        registry.register(make_artifact(tmp_path, "two"), actor="trainer")
    assert len(copied) == 3  # the failure really came mid-copy
    versions_dir = registry.root / NAME / "versions"
    assert sorted(os.listdir(versions_dir)) == ["v0001"]  # no v0002, no temp directory left
    assert [v.version for v in registry.versions(NAME)] == ["v0001"]
    assert [r["action"] for r in registry.audit(NAME)] == ["register"]

    monkeypatch.setattr(shutil, "copy2", real_copy2)
    mv = registry.register(make_artifact(tmp_path, "three"), actor="trainer")
    assert mv.version == "v0002" and registry.verify(NAME, "v0002")


def test_leftover_temp_copy_is_invisible(registry: Registry, tmp_path: Path) -> None:
    """A copy left by a killed process (a .tmp- directory) is never a version; old ones are swept."""
    registry.register(make_artifact(tmp_path, "one"), actor="trainer")
    versions_dir = registry.root / NAME / "versions"
    fresh, stale = versions_dir / ".tmp-fresh", versions_dir / ".tmp-stale"
    for d in (fresh, stale):
        shutil.copytree(make_artifact(tmp_path, d.name), d)
    os.utime(stale, (0, 0))
    assert [v.version for v in registry.versions(NAME)] == ["v0001"]
    assert registry.register(make_artifact(tmp_path, "two"), actor="trainer").version == "v0002"
    assert fresh.exists() and not stale.exists()


# --------------------------------------------------------------------------- aliases, promote, audit


def test_aliases_and_promote(registry: Registry, tmp_path: Path) -> None:
    for tag in ("one", "two", "three"):
        registry.register(make_artifact(tmp_path, tag), actor="trainer")
    assert registry.aliases(NAME) == {}

    assert registry.promote(NAME, "v0001", actor="alice", reason="first model, no champion to gate against") is None
    registry.set_alias(NAME, "challenger", "v0002", actor="retrain-loop", reason="retrained on 2024-Q2")
    assert registry.aliases(NAME) == {"champion": "v0001", "challenger": "v0002"}
    assert registry.get(NAME, "challenger").version == "v0002"

    previous = registry.promote(NAME, "v0002", actor="retrain-loop", reason="gate accepted",
                                details={"gate": {"accept": True}}, expected_champion="v0001")
    assert previous == "v0001"
    assert registry.aliases(NAME) == {"champion": "v0002"}  # the promoted challenger is no longer challenger
    assert json.loads((registry.root / NAME / "aliases.json").read_text()) == {"champion": "v0002"}
    assert registry.get(NAME, "champion").version == "v0002"

    with pytest.raises(ValueError, match="only through promote"):
        registry.set_alias(NAME, "champion", "v0003", actor="alice", reason="shortcut")
    with pytest.raises(ValueError, match="unknown alias"):
        registry.set_alias(NAME, "staging", "v0003", actor="alice", reason="x")
    with pytest.raises(KeyError, match="no version 'v0009'"):
        registry.set_alias(NAME, "challenger", "v0009", actor="alice", reason="x")
    with pytest.raises(KeyError, match="not a version id"):
        registry.promote(NAME, "latest", actor="alice", reason="x")
    with pytest.raises(ValueError, match="already the champion"):
        registry.promote(NAME, "v0002", actor="alice", reason="again")
    with pytest.raises(ValueError, match="reason"):
        registry.promote(NAME, "v0003", actor="alice", reason=" ")

    registry.set_alias(NAME, "challenger", "v0003", actor="retrain-loop", reason="retrained on 2024-Q3")
    assert registry.clear_alias(NAME, "challenger", actor="alice", reason="bad data window") == "v0003"
    assert registry.clear_alias(NAME, "challenger", actor="alice", reason="again") is None
    # Rolling back is a promotion of an older version, with a reason.
    assert registry.promote(NAME, "v0001", actor="alice", reason="rollback: incident 42") == "v0002"
    assert registry.aliases(NAME) == {"champion": "v0001"}


def test_audit_records_every_action(registry: Registry, tmp_path: Path) -> None:
    for tag in ("one", "two"):
        registry.register(make_artifact(tmp_path, tag), actor="trainer", reason=f"train {tag}")
    registry.promote(NAME, "v0001", actor="alice", reason="first model")
    registry.set_alias(NAME, "challenger", "v0002", actor="loop", reason="candidate")
    registry.promote(NAME, "v0002", actor="loop", reason="gate accepted", details={"mean": np.float64(0.8)})

    records = registry.audit(NAME)
    assert [(r["action"], r["actor"], r["version"], r["alias"], r["previous"]) for r in records] == [
        ("register", "trainer", "v0001", None, None),
        ("register", "trainer", "v0002", None, None),
        ("promote", "alice", "v0001", "champion", None),
        ("set-alias", "loop", "v0002", "challenger", None),
        ("promote", "loop", "v0002", "champion", "v0001"),
        ("clear-alias", "loop", None, "challenger", "v0002"),
    ]
    assert [r["reason"] for r in records[:5]] == ["train one", "train two", "first model", "candidate",
                                                  "gate accepted"]
    for r in records:
        assert set(r) == {"time", "actor", "action", "version", "alias", "previous", "reason", "details"}
        assert datetime.fromisoformat(r["time"]).utcoffset().total_seconds() == 0
    assert records[0]["details"]["content_hash"] == registry.get(NAME, "v0001").content_hash
    assert records[4]["details"] == {"mean": 0.8}
    # Every line of the file is one JSON object.
    lines = (registry.root / NAME / "audit.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == records


def test_audit_skips_a_line_being_written(registry: Registry, tmp_path: Path) -> None:
    registry.register(make_artifact(tmp_path, "one"), actor="trainer")
    path = registry.root / NAME / "audit.jsonl"
    with open(path, "ab") as fh:
        fh.write(b'{"time": "2024-')  # a write in progress (or torn by a crash)
    assert len(registry.audit(NAME)) == 1
    registry.refuse(NAME, "v0001", actor="loop", reason="test")  # the next append starts on a new line
    assert [r["action"] for r in registry.audit(NAME)] == ["register", "refuse"]


def test_refused_promotion_is_audited(registry: Registry, tmp_path: Path) -> None:
    for tag in ("one", "two"):
        registry.register(make_artifact(tmp_path, tag), actor="trainer")
    registry.promote(NAME, "v0001", actor="alice", reason="first model")
    labels, champion, candidate = gate_data(worse_task="mortality")
    decision = promotion_gate(labels, champion, candidate, n_resamples=100)
    assert not decision.accept
    registry.refuse(NAME, "v0002", actor="loop", reason="; ".join(decision.reasons),
                    details={"gate": decision.to_dict(), "table": decision.table()})

    assert registry.aliases(NAME) == {"champion": "v0001"}
    last = registry.audit(NAME)[-1]
    assert (last["action"], last["actor"], last["version"], last["previous"]) == ("refuse", "loop", "v0002", "v0001")
    assert "mortality" in last["reason"]
    assert last["details"]["gate"]["accept"] is False
    assert "| mortality |" in last["details"]["table"]


# --------------------------------------------------------------------------- across processes


def _race_worker(root: str, rounds: list[str], barrier, results) -> None:
    """Each round: read the champion, wait for the other process, promote with compare-and-swap."""
    registry = Registry(Path(root))
    for version in rounds:
        champion = registry.aliases(NAME).get("champion")
        barrier.wait()  # both have read the same champion
        try:
            previous = registry.promote(NAME, version, actor=f"pid-{os.getpid()}", reason="race",
                                        expected_champion=champion)
            results.put(("won", version, champion, previous))
        except PromotionConflict:
            results.put(("conflict", version, champion, None))
        barrier.wait()  # the round is over before anyone reads the champion again


def test_racing_promotions_exactly_one_wins(registry: Registry, tmp_path: Path) -> None:
    rounds = 3
    for i in range(1 + 2 * rounds):
        registry.register(make_artifact(tmp_path, f"a{i}"), actor="trainer")
    registry.promote(NAME, "v0001", actor="alice", reason="first model")
    plans = [[f"v{2 + 2 * r:04d}" for r in range(rounds)], [f"v{3 + 2 * r:04d}" for r in range(rounds)]]

    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2, timeout=120), ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(str(registry.root), plan, barrier, results)) for plan in plans]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in range(2 * rounds)]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    winners = []
    for r in range(rounds):
        round_versions = {plans[0][r], plans[1][r]}
        this_round = [o for o in outcomes if o[1] in round_versions]
        assert sorted(o[0] for o in this_round) == ["conflict", "won"]
        assert len({o[2] for o in this_round}) == 1  # both read the same champion
        (won,) = [o for o in this_round if o[0] == "won"]
        assert won[3] == won[2]  # the previous champion is the one both read
        winners.append(won[1])

    aliases = json.loads((registry.root / NAME / "aliases.json").read_text())
    assert aliases == {"champion": winners[-1]}
    records = registry.audit(NAME)
    promotes = [r for r in records if r["action"] == "promote" and r["reason"] == "race"]
    assert [r["version"] for r in promotes] == winners  # exactly one promote line per race
    conflicts = [r for r in records if r["action"] == "refuse"]
    assert len(conflicts) == rounds and all("promotion conflict" in r["reason"] for r in conflicts)


def _register_worker(root: str, artifact: str, count: int, barrier, results) -> None:
    registry = Registry(Path(root))
    barrier.wait()
    results.put([registry.register(Path(artifact), actor=f"pid-{os.getpid()}").version for _ in range(count)])


def test_concurrent_registers_get_unique_consecutive_versions(registry: Registry, tmp_path: Path) -> None:
    count = 8
    artifacts = [make_artifact(tmp_path, "p0"), make_artifact(tmp_path, "p1")]
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(2, timeout=120), ctx.Queue()
    procs = [ctx.Process(target=_register_worker, args=(str(registry.root), str(a), count, barrier, results))
             for a in artifacts]
    for p in procs:
        p.start()
    got = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    everything = got[0] + got[1]
    assert sorted(everything) == [f"v{i:04d}" for i in range(1, 2 * count + 1)]
    assert all(got_i == sorted(got_i) for got_i in got)  # each process saw its own versions increase
    assert [v.version for v in registry.versions(NAME)] == sorted(everything)
    assert all(registry.verify(NAME, v) for v in everything)
    assert sorted(r["version"] for r in registry.audit(NAME) if r["action"] == "register") == sorted(everything)
    assert not [e for e in os.listdir(registry.root / NAME / "versions") if e.startswith(".tmp-")]

