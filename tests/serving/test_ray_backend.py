"""RayBackend asks the scorer what it serves at most once per TTL, and again as soon as a
reply names another version; answers always carry the contract of the version that made them."""

from __future__ import annotations

import asyncio

from lang1ops.tasks import DEFAULT_CONTRACT
from serving.backends import RayBackend


class Remote:
    def __init__(self, fn):
        self.fn = fn

    def remote(self, *args):
        async def call():
            return self.fn(*args)

        return call()


class FakeScorerHandle:
    def __init__(self):
        self.version, self.info_calls = "v0001", 0
        self.model_info = Remote(self._info)
        self.score = Remote(self._score)

    def _info(self):
        self.info_calls += 1
        return {"name": "lang1-ops", "version": self.version, "kind": "mc",
                "contract": DEFAULT_CONTRACT.model_dump(mode="json")}

    def _score(self, text, tasks, known_versions):
        reply = {"probabilities": {t: [0.5, 0.5] for t in tasks}, "model_name": "lang1-ops",
                 "model_version": self.version, "model_kind": "mc", "note_tokens": 3, "truncated": False,
                 "encoding": b""}
        if self.version not in known_versions:
            reply["contract"] = DEFAULT_CONTRACT.model_dump(mode="json")
        return reply


def test_model_info_is_cached_until_the_ttl_or_a_new_version_answers():
    async def scenario():
        handle = FakeScorerHandle()
        backend = RayBackend(handle, info_ttl_s=60)
        first = await backend.model_info()
        await backend.model_info()
        await backend.score("note", ["mortality"])
        assert handle.info_calls == 1 and first.version == "v0001"
        handle.version = "v0002"  # the champion is swapped
        reply = await backend.score("note", ["mortality"])
        assert reply.model_version == "v0002"
        assert (await backend.contract_for("v0002")) == DEFAULT_CONTRACT
        swapped = await backend.model_info()
        assert swapped.version == "v0002" and handle.info_calls == 2
        expiring = RayBackend(handle, info_ttl_s=0)
        await expiring.model_info()
        await expiring.model_info()
        assert handle.info_calls == 4

    asyncio.run(scenario())
