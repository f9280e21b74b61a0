"""One-pass multitask scoring: encode a note once, answer every task from that encoding.

The note is the long part of every prompt (up to 512 tokens); the task questions are short
suffixes (~40 tokens). So the scorer runs the decoder over the note once, keeps its keys
and values, and runs each task's question against that cache, cropping the cache back to
the note after each task. Logits are computed only for the option letters at the answer
position (the full 49k-word output layer over 550 positions is a fifth of a naive forward).
A heads model stops after its pooled layer and applies one linear head per task.

Shapes in comments: B notes in a batch, L padded note length, S suffix length, H hidden size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from lang1ops.artifact import (
    ArtifactManifest,
    Method,
    ModelKind,
    Pooling,
    load_artifact_contract,
    resolve_base,
)
from lang1ops.base_model import load_causal_lm, load_tokenizer
from lang1ops.calibration import calibrated
from lang1ops.ngrams import NGRAMS_FILE, NgramFeatures
from lang1ops.prompts import PromptEncoder
from lang1ops.tasks import TaskContract


def cpu_has_native_bf16() -> bool:
    """AVX-512 BF16 or AMX: without them PyTorch emulates bf16 matmuls, hundreds of times
    slower than fp32 (0.3 vs 84 GFLOP/s measured on an AVX2-only EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return bool(re.search(r"\b(avx512_bf16|amx_bf16)\b", flags))


def choose_dtype(device: str | torch.device = "cpu", requested: str = "auto") -> torch.dtype:
    if requested != "auto":
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[requested]
    if torch.device(device).type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


class _StopForward(Exception):
    pass


@dataclass
class LoadedModel:
    """A model ready to score: the causal LM (or frozen base), its tokenizer and contract."""

    kind: ModelKind
    contract: TaskContract
    model: torch.nn.Module  # a *ForCausalLM (LoRA merged)
    encoder: PromptEncoder
    pooling: Pooling | None = None  # heads: the pooled layer
    heads: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None  # task -> (weight k x H, bias k)
    normalizer: tuple[torch.Tensor, torch.Tensor] | None = None  # (mean, scale) of pooled features for heads
    ngrams: NgramFeatures | None = None  # heads that also read the note's n-grams
    ngram_heads: dict[str, torch.Tensor] | None = None  # task -> (k x vocabulary) weights on the n-grams
    manifest: ArtifactManifest | None = None
    version: str = ""


def load_model(artifact_dir: Path, base_fallback: Path | None = None, device: str = "cpu", dtype: str = "auto",
               version: str = "") -> LoadedModel:
    artifact_dir = Path(artifact_dir)
    manifest = ArtifactManifest.load(artifact_dir)
    contract = load_artifact_contract(artifact_dir)
    torch_dtype = choose_dtype(device, dtype)
    tokenizer = load_tokenizer(artifact_dir / "tokenizer")
    if manifest.kind == ModelKind.MC and manifest.method == Method.FULL:
        model = load_causal_lm(artifact_dir / "weights", dtype=torch_dtype)
    else:
        model = load_causal_lm(resolve_base(manifest.base, base_fallback), dtype=torch_dtype)
        if manifest.method == Method.LORA:
            from peft import PeftModel

            # merging the adapter gives the same function as base + adapter at no extra cost per token
            model = PeftModel.from_pretrained(model, str(artifact_dir / "adapter")).merge_and_unload()
    model.to(device).eval()
    loaded = LoadedModel(manifest.kind, contract, model, PromptEncoder(tokenizer, contract, manifest.max_note_tokens),
                         pooling=manifest.pooling, manifest=manifest, version=version)
    if manifest.kind == ModelKind.HEADS:
        tensors = load_file(str(artifact_dir / "heads.safetensors"))
        loaded.normalizer = (tensors["mean"].to(device), tensors["scale"].to(device))
        loaded.heads = {t.name: (tensors[f"{t.name}.weight"].to(device), tensors[f"{t.name}.bias"].to(device))
                        for t in contract.tasks}
        if (artifact_dir / NGRAMS_FILE).exists():
            loaded.ngrams = NgramFeatures.load(artifact_dir, tensors["ngram_idf"].numpy())
            loaded.ngram_heads = {t.name: tensors[f"{t.name}.ngram_weight"] for t in contract.tasks}
            for task, weight in loaded.ngram_heads.items():
                if weight.shape[1] != loaded.ngrams.size:
                    raise ValueError(f"{task}.ngram_weight has {weight.shape[1]} columns but {NGRAMS_FILE} "
                                     f"describes {loaded.ngrams.size} features")
    return loaded


def head_probabilities(loaded: LoadedModel, pooled: np.ndarray, texts: list[str], tasks: list[str]) -> dict[str, np.ndarray]:
    """A heads model's calibrated class probabilities from the notes' pooled states (n, H) and,
    for a model that reads them, the notes' n-grams: the one computation the service, the
    evaluation and the drift loop's gate all use."""
    mean, scale = (t.cpu().numpy() for t in loaded.normalizer)
    x = (np.asarray(pooled, dtype=np.float32) - mean) / scale
    grams = loaded.ngrams.transform(texts) if loaded.ngrams is not None and len(texts) else None
    out = {}
    for task in tasks:
        weight, bias = (t.cpu().numpy() for t in loaded.heads[task])
        logits = x.astype(np.float64) @ weight.T.astype(np.float64) + bias
        if grams is not None:
            logits = logits + grams @ loaded.ngram_heads[task].numpy().T.astype(np.float64)
        out[task] = served_probabilities(loaded, task, softmax(logits))
    return out


def served_probabilities(loaded: LoadedModel, task: str, probs: np.ndarray) -> np.ndarray:
    """`probs` through the artifact's validation-fitted calibration map of `task`; unchanged while
    training evaluates a model that has no manifest yet."""
    return calibrated(probs, loaded.manifest.calibration.get(task)) if loaded.manifest else probs


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def decoder_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the decoder stack, the output layer) of a causal LM, also through a peft wrapper."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return inner.get_decoder(), inner.get_output_embeddings()


def pad_batch(sequences: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, L) and attention mask (B, L)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H), (B, L) -> (B, H) mean over real tokens, in float32."""
    weights = mask.unsqueeze(-1).to(torch.float32)
    return (hidden.to(torch.float32) * weights).sum(1) / weights.sum(1).clamp(min=1)


def pooled_layers(decoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
    """Mean-pooled outputs (B, H) of the given decoder layers (1-based). The forward stops at
    the deepest of them (a hook raises), so a heads model pays only for the layers it reads."""
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []
    for layer in layers:
        def grab(_module, _inputs, output, layer=layer):
            captured[layer] = mean_pool(output[0] if isinstance(output, tuple) else output, mask)
            if layer == deepest:
                raise _StopForward
        handles.append(decoder.layers[layer - 1].register_forward_hook(grab))
    try:
        decoder(input_ids=ids, attention_mask=mask, use_cache=False)
    except _StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
    return captured


class NoteEncoder:
    """Pooled encodings of notes by a frozen base, in length-sorted batches (for heads)."""

    def __init__(self, model: torch.nn.Module, encoder: PromptEncoder, layers: list[int], max_batch_notes: int = 8):
        self.decoder, _ = decoder_parts(model)
        self.encoder, self.layers, self.max_batch_notes = encoder, sorted(set(layers)), max_batch_notes
        self.device = next(model.parameters()).device
        tok = encoder.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    @torch.inference_mode()
    def encode(self, texts: list[str], on_batch=None) -> dict[int, np.ndarray]:
        """layer -> (n, H) pooled encodings, in the order of `texts`."""
        ids = [self.encoder.encode_note(t) for t in texts]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = {layer: np.zeros((len(texts), self.decoder.config.hidden_size), dtype=np.float32) for layer in self.layers}
        for start in range(0, len(order), self.max_batch_notes):
            rows = order[start : start + self.max_batch_notes]
            batch, mask = pad_batch([ids[i] for i in rows], self.pad_id, self.device)
            for layer, pooled in pooled_layers(self.decoder, batch, mask, self.layers).items():
                out[layer][rows] = pooled.cpu().numpy()
            if on_batch:
                on_batch(len(rows))
        return out


@dataclass
class NoteScore:
    probabilities: dict[str, np.ndarray]  # task -> (k,)
    pooled: np.ndarray  # (H,) the note's pooled encoding (for drift monitoring)
    note_tokens: int  # tokens of the note kept after truncation
    truncated: bool


class MultitaskScorer:
    def __init__(self, loaded: LoadedModel, max_batch_notes: int = 8, max_batch_tokens: int = 4096):
        self.m = loaded
        self.max_batch_notes = max_batch_notes
        self.max_batch_tokens = max_batch_tokens
        self.decoder, self.lm_head = decoder_parts(loaded.model)
        self.device = next(loaded.model.parameters()).device
        tok = loaded.encoder.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    # --- public ---------------------------------------------------------------------------
    def score(self, texts: list[str], tasks: list[list[str]] | None = None) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
        """Class probabilities per note and task, and each note's pooled encoding (n, H).

        `tasks[i]` lists the tasks to answer for note i (default: every task of the contract).
        """
        notes = self.score_notes(texts, tasks)
        return [n.probabilities for n in notes], np.stack([n.pooled for n in notes]) if notes else np.zeros(
            (0, self.hidden_size), dtype=np.float32)

    def score_notes(self, texts: list[str], tasks: list[list[str]] | None = None) -> list[NoteScore]:
        names = self.m.contract.names
        tasks = tasks or [names] * len(texts)
        encodings = [self.m.encoder.note_encoding(t) for t in texts]
        encoded = [e.ids for e in encodings]
        out: list[NoteScore | None] = [None] * len(texts)
        for batch in self._batches(encoded, tasks):
            probs, vectors = self._score_batch([encoded[i] for i in batch], tasks[batch[0]], [texts[i] for i in batch])
            for row, i in enumerate(batch):
                out[i] = NoteScore({t: p[row] for t, p in probs.items()}, vectors[row], encodings[i].kept_tokens,
                                   encodings[i].truncated)
        return out

    @property
    def hidden_size(self) -> int:
        return self.m.model.config.hidden_size

    # --- internals ------------------------------------------------------------------------
    def _batches(self, encoded: list[list[int]], tasks: list[list[str]]) -> list[list[int]]:
        """Notes with the same task set, longest first, packed under the note and token caps
        (similar lengths together waste little padding)."""
        order = sorted(range(len(encoded)), key=lambda i: (tuple(tasks[i]), -len(encoded[i])))
        batches: list[list[int]] = []
        for i in order:
            current = batches[-1] if batches else None
            fits = (current is not None and tasks[current[0]] == tasks[i] and len(current) < self.max_batch_notes
                    and (len(current) + 1) * len(encoded[current[0]]) <= self.max_batch_tokens)
            if fits:
                current.append(i)
            else:
                batches.append([i])
        return batches

    @torch.inference_mode()
    def _score_batch(self, notes: list[list[int]], tasks: list[str], texts: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        ids, mask = pad_batch(notes, self.pad_id, self.device)  # (B, L)
        if self.m.kind == ModelKind.HEADS:
            pooled = pooled_layers(self.decoder, ids, mask, [self.m.pooling.layer])[self.m.pooling.layer].cpu().numpy()
            return head_probabilities(self.m, pooled, texts, tasks), pooled
        out = self.decoder(input_ids=ids, attention_mask=mask, use_cache=True)
        cache = out.past_key_values
        pooled = mean_pool(out.last_hidden_state, mask)
        lengths = mask.sum(1)  # (B,) real note lengths: suffix positions continue from here
        probs = {}
        for task in tasks:
            suffix = torch.tensor(self.m.encoder.suffix_ids(task), device=self.device)
            s = suffix.shape[0]
            suffix_ids = suffix.unsqueeze(0).expand(len(notes), s)  # (B, S)
            positions = lengths.unsqueeze(1) + torch.arange(s, device=self.device)  # (B, S)
            full_mask = torch.cat([mask, torch.ones_like(suffix_ids)], dim=1)  # (B, L + S): padding stays masked
            hidden = self.decoder(input_ids=suffix_ids, attention_mask=full_mask, position_ids=positions,
                                  past_key_values=cache, use_cache=True).last_hidden_state[:, -1]  # (B, H) at "Answer:"
            option_rows = self.lm_head.weight[self.m.encoder.option_token_ids(task)]  # (k, H)
            logits = hidden.to(torch.float32) @ option_rows.to(torch.float32).T  # (B, k)
            if getattr(self.lm_head, "bias", None) is not None:
                logits = logits + self.lm_head.bias[self.m.encoder.option_token_ids(task)].to(torch.float32)
            probs[task] = served_probabilities(self.m, task, torch.softmax(logits.to(torch.float64), dim=-1).cpu().numpy())
            cache.crop(-s)  # drop the question's keys/values: back to the note alone
        return probs, pooled.cpu().numpy()
