"""vLLM scoring for GPU workers (`serving.backend: vllm`), in the GPU image only.

vLLM pins its own torch, so it never enters the CPU install: importing this module is safe
everywhere; constructing `VllmScorer` without vLLM raises `VllmUnavailable`.

How it scores: each (note, task) pair is one prompt of token ids, note first and question
last, so vLLM's automatic prefix caching computes the note's keys and values once and
shares them across the note's tasks. Generation is one token, restricted to the option
letters (`allowed_token_ids`), and the engine reports log-probabilities after that
restriction (`logprobs_mode="processed_logprobs"`), so the letters' log-probabilities are
exactly the softmax over the option logits the paper uses. The replica's batcher adds nothing in
front of vLLM (it batches continuously): the Serve replica passes requests straight through.

Not yet run on a GPU from this repository (no accelerator was lent to the session that wrote
it); `bench/gpu.py` exercises it whenever one is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lang1ops.artifact import ArtifactManifest, Method, ModelKind, load_artifact_contract
from lang1ops.base_model import load_tokenizer
from lang1ops.prompts import PromptEncoder
from lang1ops.scorer import NoteScore


class VllmUnavailable(RuntimeError):
    pass


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


class VllmScorer:
    """The MultitaskScorer interface (`score_notes`) on a vLLM engine (mc models)."""

    def __init__(self, model_dir: Path, artifact_dir: Path, gpu_memory_utilization: float = 0.85,
                 max_num_seqs: int = 256):
        try:
            from vllm import LLM
        except ImportError as exc:
            raise VllmUnavailable("vLLM is not installed: the vllm backend runs in the GPU image "
                                  "(docker/Dockerfile.gpu); use backend 'hf' on CPU") from exc
        manifest = ArtifactManifest.load(artifact_dir)
        if manifest.kind != ModelKind.MC:
            raise ValueError("the vLLM backend serves option-letter (mc) models; heads run on the PyTorch scorer "
                             "(serving.backends.engine_for chooses it)")
        self.contract = load_artifact_contract(artifact_dir)
        self.encoder = PromptEncoder(load_tokenizer(artifact_dir / "tokenizer"), self.contract, manifest.max_note_tokens)
        lora = {}
        self.lora_request = None
        if manifest.method == Method.LORA:  # the joint multitask adapter: one LoRA id, so prefixes stay shared
            from vllm.lora.request import LoRARequest

            adapter = artifact_dir / "adapter"
            rank = int(json.loads((adapter / "adapter_config.json").read_text()).get("r", 8))
            lora = {"enable_lora": True, "max_lora_rank": max(8, rank), "max_loras": 1}
            self.lora_request = LoRARequest("lang1ops-adapter", 1, str(adapter))
        self.llm = LLM(model=str(model_dir), dtype="bfloat16", enable_prefix_caching=True,
                       gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
                       logprobs_mode="processed_logprobs", **lora)

    def score_notes(self, texts: list[str], tasks: list[list[str]] | None = None) -> list[NoteScore]:
        from vllm import SamplingParams, TokensPrompt

        tasks = tasks or [self.contract.names] * len(texts)
        encodings = [self.encoder.note_encoding(t) for t in texts]
        prompts, params, index = [], [], []
        for i, (encoding, wanted) in enumerate(zip(encodings, tasks, strict=True)):
            for task in wanted:
                options = self.encoder.option_token_ids(task)
                prompts.append(TokensPrompt(prompt_token_ids=encoding.ids + self.encoder.suffix_ids(task)))
                params.append(SamplingParams(max_tokens=1, temperature=0.0, allowed_token_ids=options,
                                             logprobs=len(options)))
                index.append((i, task, options))
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora_request)
        probabilities: list[dict[str, np.ndarray]] = [{} for _ in texts]
        for (i, task, options), output in zip(index, outputs, strict=True):
            logprobs = output.outputs[0].logprobs[0]  # token id -> Logprob at the answer position
            values = np.array([logprobs[t].logprob if t in logprobs else -math.inf for t in options], dtype=np.float64)
            values = np.exp(values - values.max())
            probabilities[i][task] = values / values.sum()
        return [NoteScore(probabilities[i], np.zeros(0, dtype=np.float32), e.kept_tokens, e.truncated)
                for i, e in enumerate(encodings)]
