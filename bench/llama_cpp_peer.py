"""llama.cpp's side of bench/peers.py, in a process of its own: llama.cpp (built with OpenMP)
crashed in `llama_decode` when it ran in the benchmark's process after torch had run its own
OpenMP thread pool there, so this module never imports torch. Job in on stdin, result out on
stdout, both JSON: the project's token ids go in, so llama.cpp reads exactly the same prompts.

The five questions share the note's KV cache: `Llama.eval` keeps the cache up to `n_tokens` and
drops the rest, so setting `n_tokens` back to the note's length before each question reuses the
note and evaluates only the question.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max())
    return z / z.sum()


def measure(job: dict) -> dict:
    import llama_cpp.llama_cpp as native
    from llama_cpp import Llama

    if not job.get("extra_buffers", True):
        # llama.cpp's repacked/AMX weight layouts off (the `--no-extra-bufts` of its CLI, which
        # Llama() does not expose): with them the Q4_1 GGUF crashed in llama_decode on this CPU
        defaults = native.llama_model_default_params

        def model_params():
            params = defaults()
            params.use_extra_bufts = False
            return params

        native.llama_model_default_params = model_params
    llm = Llama(model_path=job["gguf"], n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=job["threads"],
                n_threads_batch=job["threads"], logits_all=False, verbose=False)
    n_vocab = llm.n_vocab()
    tasks = list(job["suffixes"])

    def score(notes: list[list[int]]) -> list[dict[str, list[float]]]:
        out = []
        for ids in notes:
            llm.reset()
            llm.eval(ids)
            probabilities = {}
            for task in tasks:
                llm.n_tokens = len(ids)
                llm.eval(job["suffixes"][task])
                # with logits_all=False llama-cpp-python leaves `scores` unfilled: read the context's buffer
                logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,)).astype(np.float64)
                probabilities[task] = _softmax(logits[job["options"][task]]).tolist()
            out.append(probabilities)
        return out

    notes = job["notes"]
    score(notes[:1])  # warm-up
    rates = []
    for _ in range(job["repeats"]):
        start = time.perf_counter()
        score(notes)
        rates.append(len(notes) / (time.perf_counter() - start))
    return {"rates": rates, "reference": score(notes[:job["n_reference"]])}


if __name__ == "__main__":
    json.dump(measure(json.load(sys.stdin)), sys.stdout)
