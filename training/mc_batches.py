"""What an mc-sft step trains on: (note, question) examples or shared notes, how batches mix
the tasks evenly, and the option-letter loss at the answer position.

Two ways to build a step, the same loss: one prompt per (note, question) pair (`Example`,
`collate`, `option_loss`), or each note encoded once with every question it is labeled for
asked from its kept keys and values (`NoteItem`, `collate_notes`, `shared_option_loss`: the
scorer's branching, with gradients). `training.mc_sft` runs the loop over either.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lang1ops.prompts import PromptEncoder
from lang1ops.scorer import decoder_parts, pad_batch
from training.dataset import Dataset


@dataclass
class Example:
    ids: list[int]  # note ids + question suffix ids
    task: str
    label: int
    options: list[int]  # option-letter token ids of the task


@dataclass
class NoteItem:
    """One training note with every task it is labeled for, encoded once (shared_notes)."""

    ids: list[int]  # the note's ids, truncated, without a question
    group: str  # its note type: notes of one type are asked the same questions
    labels: dict[str, int]  # task -> label


def build_examples(dataset: Dataset, encoder: PromptEncoder, tasks: list[str], split: str, cap: int | None,
                   seed: int) -> dict[str, list[Example]]:
    out = {}
    for task in tasks:
        frame = dataset.task_frame(task, split)
        if cap and len(frame) > cap:
            frame = frame.sample(cap, random_state=seed)
        options = encoder.option_token_ids(task)
        out[task] = [Example(encoder.prompt_ids(text, task), task, int(label), options)
                     for text, label in zip(frame["text"], frame["label"], strict=True)]
    return out


def build_note_items(dataset: Dataset, encoder: PromptEncoder, tasks: list[str], split: str, cap: int | None,
                     seed: int) -> dict[str, list[NoteItem]]:
    """note type -> notes, each with its labels: the same (note, task, label) triples as
    `build_examples` (the same per-task caps), one entry per note."""
    by_note: dict[str, NoteItem] = {}
    for task in tasks:
        frame = dataset.task_frame(task, split)
        if cap and len(frame) > cap:
            frame = frame.sample(cap, random_state=seed)
        group = str(encoder.contract.task(task).note_type)
        for note_id, text, label in zip(frame["note_id"], frame["text"], frame["label"], strict=True):
            item = by_note.get(note_id)
            if item is None:
                item = by_note[note_id] = NoteItem(encoder.encode_note(text), group, {})
            item.labels[task] = int(label)
    out: dict[str, list[NoteItem]] = {}
    for item in by_note.values():
        out.setdefault(item.group, []).append(item)
    return out


def sampler_batch_size(train: dict[str, list], batch_size: int, tasks: int) -> int:
    """Items per step: examples, or with shared notes enough notes of every note type for about
    `batch_size` examples with the tasks still mixed evenly (ceil(batch / tasks) of each type)."""
    if not is_shared(train):
        return batch_size
    return math.ceil(batch_size / max(tasks, 1)) * len(train)


def is_shared(train: dict[str, list]) -> bool:
    return any(isinstance(items[0], NoteItem) for items in train.values() if items)


class EvenTaskSampler:
    """Batches with the tasks mixed evenly: every batch cycles through the tasks, each task
    drawing from its own shuffled stream (reshuffled when exhausted), as the paper mixes tasks.
    With shared notes the streams are note types, each note carrying all its tasks."""

    def __init__(self, examples: dict[str, list[Example]], batch_size: int, seed: int):
        self.tasks = [t for t, e in examples.items() if e]
        self.examples, self.batch_size = examples, batch_size
        self.rng = random.Random(seed)
        self.streams: dict[str, list[Example]] = {t: [] for t in self.tasks}
        self.offset = 0

    def _draw(self, task: str) -> Example:
        if not self.streams[task]:
            self.streams[task] = self.rng.sample(self.examples[task], len(self.examples[task]))
        return self.streams[task].pop()

    def next_batch(self) -> list[Example]:
        batch = [self._draw(self.tasks[(self.offset + i) % len(self.tasks)]) for i in range(self.batch_size)]
        self.offset = (self.offset + self.batch_size) % len(self.tasks)
        return batch

    def state(self) -> dict:
        """Where every stream stands, as example positions (a checkpoint holds no note text)."""
        position = {t: {id(e): i for i, e in enumerate(self.examples[t])} for t in self.tasks}
        return {"rng": self.rng.getstate(), "offset": self.offset,
                "streams": {t: [position[t][id(e)] for e in self.streams[t]] for t in self.tasks}}

    def restore(self, state: dict) -> None:
        self.rng.setstate(state["rng"])
        self.offset = state["offset"]
        self.streams = {t: [self.examples[t][i] for i in state["streams"][t]] for t in self.tasks}


def collate(batch: list[Example], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Left-padded so the answer position is the last for every row; explicit position ids keep
    each prompt's positions identical to the unpadded ones the scorer uses."""
    width = max(len(e.ids) for e in batch)
    k = max(len(e.options) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    options = torch.zeros((len(batch), k), dtype=torch.long)
    valid = torch.zeros((len(batch), k), dtype=torch.bool)
    for row, e in enumerate(batch):
        ids[row, width - len(e.ids):] = torch.tensor(e.ids)
        mask[row, width - len(e.ids):] = 1
        options[row, : len(e.options)] = torch.tensor(e.options)
        valid[row, : len(e.options)] = True
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    labels = torch.tensor([e.label for e in batch])
    return {k_: v.to(device) for k_, v in dict(input_ids=ids, attention_mask=mask, position_ids=positions, options=options,
                                               valid=valid, labels=labels).items()}


def option_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy over the task's option letters at the answer (last) position. Calls the
    model's own forward (so DDP synchronises gradients) with logits for one position only."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                logits_to_keep=1, use_cache=False)
    last = out.logits[:, -1, :].float()  # (B, V)
    logits = last.gather(1, batch["options"]).masked_fill(~batch["valid"], float("-inf"))  # (B, k)
    return F.cross_entropy(logits, batch["labels"])


def collate_notes(batch: list[NoteItem], encoder: PromptEncoder, device) -> list[dict]:
    """Per note type: right-padded note ids and mask (B, L), and for each task its labels (B,),
    -100 where a note has no label for it."""
    groups: dict[str, list[NoteItem]] = {}
    for item in batch:
        groups.setdefault(item.group, []).append(item)
    order = {name: i for i, name in enumerate(encoder.contract.names)}
    out = []
    for items in groups.values():
        ids, mask = pad_batch([i.ids for i in items], encoder.tokenizer.pad_token_id, device)
        tasks = sorted({t for i in items for t in i.labels}, key=order.__getitem__)
        out.append({"input_ids": ids, "attention_mask": mask,
                    "labels": {t: torch.tensor([i.labels.get(t, -100) for i in items], device=device) for t in tasks}})
    return out


def shared_option_loss(model: torch.nn.Module, groups: list[dict], encoder: PromptEncoder) -> torch.Tensor:
    """The mean option cross-entropy over every (note, task) pair of the batch, each note encoded
    once: its keys and values are kept and every question it is labeled for runs against them,
    as the scorer answers (positions continue after the note, padding stays masked). The same
    loss as `option_loss` on the pairs as separate prompts, with the note's tokens run once."""
    decoder, lm_head = decoder_parts(model)
    total, count = None, 0
    for group in groups:
        mask = group["attention_mask"]
        cache = decoder(input_ids=group["input_ids"], attention_mask=mask, use_cache=True).past_key_values
        lengths = mask.sum(1)  # (B,) real note lengths
        for task, labels in group["labels"].items():
            suffix = torch.tensor(encoder.suffix_ids(task), device=mask.device)
            s = suffix.shape[0]
            suffix_ids = suffix.unsqueeze(0).expand(mask.shape[0], s)
            hidden = decoder(input_ids=suffix_ids, attention_mask=torch.cat([mask, torch.ones_like(suffix_ids)], dim=1),
                             position_ids=lengths.unsqueeze(1) + torch.arange(s, device=mask.device),
                             past_key_values=cache, use_cache=True).last_hidden_state[:, -1]  # (B, H) at "Answer:"
            options = encoder.option_token_ids(task)
            logits = hidden.float() @ lm_head.weight[options].float().T  # (B, k)
            if getattr(lm_head, "bias", None) is not None:
                logits = logits + lm_head.bias[options].float()
            loss = F.cross_entropy(logits, labels, ignore_index=-100, reduction="sum")
            total = loss if total is None else total + loss
            count += int((labels != -100).sum())
            cache.crop(-s)  # back to the note alone for the next question
    return total / max(count, 1)
