"""The same mc-sft training on several workers with Ray Train (DDP; GPUs with bf16 when asked).

Every worker runs `training.mc_sft.train_loop` on its share of each global batch; worker 0
evaluates, decides early stopping for all, and writes the artifact to `out_dir`, which on a
cluster must be a path all workers share (the registry's volume).
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from training.mc_sft import SftConfig


def _worker(cfg: dict) -> None:
    import ray.train
    import ray.train.torch

    from training.calibration import fit_calibrations
    from training.dataset import Dataset
    from training.mc_sft import (
        load_trainable_state,
        make_model,
        prepare,
        train_loop,
        validation_probabilities,
        write_mc_artifact,
    )

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    # DDP synchronises gradients through the wrapped model's forward: one prompt per example here
    config = SftConfig(**{**cfg["config"], "shared_notes": False})
    if cfg["use_gpu"]:
        config.device = str(ray.train.torch.get_device())
    dataset, base = Dataset.load(cfg["dataset"]), Path(cfg["base"])
    contract, encoder, train, val = prepare(dataset, base, config)
    model = ray.train.torch.prepare_model(make_model(base, config), move_to_device=cfg["use_gpu"])

    def report(step: int, point) -> None:
        metrics = {"step": step}
        if point is not None:
            metrics |= {"val_auroc": point.val_auroc, "val_loss": point.val_loss}
        ray.train.report(metrics)

    result, best_state = train_loop(model, train, val, encoder, contract, config, cfg["lr"], config.max_steps,
                                    is_main=rank == 0, shard=(rank, world), on_report=report)
    if rank == 0:
        if best_state is not None:
            load_trainable_state(model, best_state)
        calibration = fit_calibrations(validation_probabilities(model, encoder, contract, val, config))
        write_mc_artifact(model, dataset, base, Path(cfg["out_dir"]), config, contract, result, cfg["name"],
                          {"workers": world, "gpu": cfg["use_gpu"]}, wall_time_s=time.perf_counter() - cfg["started"],
                          calibration=calibration)


def train_mc_distributed(dataset_dir: Path, base_dir: Path, out_dir: Path, config: SftConfig, workers: int,
                         use_gpu: bool = False, name: str = "lang1-ops", storage: Path | None = None) -> Path:
    """Run on `workers` Ray Train workers; the learning rate must be given (search first with
    `train_mc`'s single-process search, or pass the paper's best)."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from lang1ops.ray_local import ensure_ray

    if config.lr is None:
        raise ValueError("distributed training needs a learning rate (run the search in one process first)")
    ensure_ray()
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"config": asdict(config), "dataset": str(Path(dataset_dir).resolve()),
                           "base": str(Path(base_dir).resolve()), "out_dir": str(Path(out_dir).resolve()),
                           "lr": config.lr, "use_gpu": use_gpu, "name": name, "started": time.perf_counter()},
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})}),
        run_config=RunConfig(name=f"mc-sft-{int(time.time())}",
                             storage_path=str(Path(storage or Path(out_dir).parent / "ray-runs").resolve())),
    )
    result = trainer.fit()
    if result.error:
        raise RuntimeError(f"distributed training failed: {result.error}")
    return Path(out_dir)
