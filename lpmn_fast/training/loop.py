"""``train(config) -> results``: one training run, top to bottom.

config -> data (corpus, split, cached frozen features) -> model (+ k-means codebook) -> loop
(Adam steps, dead-prototype restarts, checkpoints every N steps and every epoch, per-epoch
validation, best checkpoint on the validation metric) -> evaluation of the best checkpoint on
the test split -> for LPMN, prototype selection + linear probing -> outputs in the run directory.

Resumption replays exactly: the batches (order, bucketing, crops) are a function of (seed,
epoch), restarts draw from a generator seeded by (seed, step), the learning rate is a function of
the step, and the checkpoint holds model, optimizer, fp16 gradient-scaler and RNG states. Bit for
bit with deterministic algorithms (``--deterministic``, the CPU default); without them (the CUDA
default) up to the order of floating-point sums.
"""

from __future__ import annotations

import json
import logging
import os
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml
from tqdm import tqdm

from ..data.atomic import write_text_atomic
from ..models.backbones import FRAME_SHIFT_MS
from ..models.pretrained import bundle_backbone
from .build import build_model, build_optimizer, lr_factor, pick_device
from .checkpoint import load_checkpoint, load_model_state, read_checkpoint_json, restore_rng, save_checkpoint
from .config import TrainConfig, changed_fields, config_dict, resolve
from .corpus import prepare_data
from .plots import plot_confusion, plot_curves
from .distributed import setup_distributed
from .features import feature_bytes
from .loader import batch_loader, feature_sizes
from .precision import Precision
from .sampler import epoch_batches
from .logs import EpochLog, run_logging
from ..models.card import run_evaluation
from ..provenance import provenance
from .probe import linear_probe
from .steps import evaluate, init_codebook, lpmn_layer, padded_frames, restart_dead_prototypes, train_step

log = logging.getLogger(__name__)
# the progress bar shows the loss every this many steps: reading it waits for the GPU
PROGRESS_EVERY = 25


def _dump(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


@contextmanager
def _torch_settings(threads: int | None, deterministic: bool = True):
    """Deterministic algorithms while training if asked (CPU index_put with accumulate, used by the
    quantization loss's backward, otherwise sums in a thread-dependent order; the fused backward's
    Fisher sums in a fixed order; cuBLAS in a fixed workspace), so that a resumed run replays an
    uninterrupted one bit for bit; and the requested CPU thread count."""
    previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                torch.get_num_threads())
    if deterministic:
        # cuBLAS is deterministic only with a fixed workspace, read when its handle is created
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        torch.set_num_threads(previous[2])


def train(config: TrainConfig) -> dict:
    """Train one model as ``config`` says; return (and write to run_dir/metrics.json) its results.

    An interrupted run (``stop_after_steps``) returns ``{"interrupted": True, ...}``.
    """
    c = resolve(config)
    rank0 = os.environ.get("RANK", "0") == "0"  # under torchrun only rank 0 writes train.log
    precision = Precision.create(c.precision, pick_device(c.device))  # an unusable precision fails here
    with _torch_settings(c.threads, deterministic_default(c)), precision.matmul_settings(), \
            run_logging(c.run_dir, console=c.progress, enabled=rank0):
        return _train(c, precision)


def deterministic_default(c: TrainConfig) -> bool:
    """``c.deterministic``, or when unset: on for CPU runs, off for CUDA runs (speed)."""
    if c.deterministic is not None:
        return bool(c.deterministic)
    return pick_device(c.device).type == "cpu"


def _train(c: TrainConfig, precision: Precision) -> dict:
    # ---- config ---------------------------------------------------------------------------
    cfg = config_dict(c)
    run_dir = Path(c.run_dir)
    ckpt_dir = run_dir / "checkpoints"
    dist = setup_distributed(pick_device(c.device))  # one process, or this rank of a torchrun launch
    device = dist.device
    started = time.perf_counter()
    last = read_checkpoint_json(ckpt_dir, "last")
    if c.resume and last is None:
        raise FileNotFoundError(f"--resume: no checkpoint to resume in {ckpt_dir} (checkpoints/last.json missing)")
    if not c.resume and last is not None:
        raise FileExistsError(f"{run_dir} already holds a run; pass --resume to continue it or choose another "
                              "--run-dir")
    if last is not None and (changed := changed_fields(last["config"], cfg)):
        raise ValueError(f"cannot resume {run_dir}: config differs from the saved run in {changed}")
    torch.manual_seed(c.seed)

    # ---- data -----------------------------------------------------------------------------
    dist.wait_for_main()  # under torchrun, rank 0 makes the corpus and the feature cache first
    data = prepare_data(c)
    corpus, split, classes, backbone, sets = data.corpus, data.split, data.classes, data.backbone, data.sets
    dist.main_done()
    if dist.active and c.grad_accum > 1:
        raise ValueError("grad_accum > 1 is not supported under torchrun: raise --batch-size (the global batch "
                         "is split over the processes) or use one process")
    cache_bytes = sum(feature_bytes(s.features) for s in sets.values())
    if c.cache_features and dist.is_main:
        log.info(f"feature cache ({c.cache_dtype}): {cache_bytes / 2**20:.1f} MiB in memory")

    # ---- model ----------------------------------------------------------------------------
    model = build_model(c, len(classes), backbone).to(device)
    optimizer = build_optimizer(c, model)
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # the schedule scales these
    scaler = precision.grad_scaler()  # fp16 only
    run = {"epoch": 0, "step": 0, "step_in_epoch": 0, "epoch_loss": 0.0, "epoch_ce": 0.0, "restarts": 0,
           "best": None, "history": [], "kmeans_frames": None, "epoch_frames": 0, "epoch_padded": 0,
           "stopped_early": False}
    if last is not None:
        meta, model_state, optim_state, rng = load_checkpoint(ckpt_dir, "last")
        load_model_state(model, model_state)
        optimizer.load_state_dict(optim_state)
        restore_rng(rng)
        run = {**run, **meta["run"]}
        if scaler is not None and meta.get("scaler") is not None:
            scaler.load_state_dict(meta["scaler"])
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        if lpmn_layer(model) is not None and dist.is_main:
            run["kmeans_frames"] = init_codebook(model, sets["train"], c.kmeans_frames, c.batch_size * c.grad_accum,
                                                 c.seed, device)
    dist.broadcast_model(model)  # rank 0's codebook to every rank
    train_model = dist.wrap(model)  # DDP under torchrun
    logs = EpochLog(run_dir, c.log, completed_epochs=run["epoch"], enabled=dist.is_main)  # metrics.csv / tb/
    if dist.is_main:
        write_text_atomic(run_dir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))

    def checkpoint(name: str = "last") -> None:
        if not dist.is_main:
            return
        # "best" is only ever evaluated, never resumed from: no optimizer state.
        extra = {"scaler": scaler.state_dict()} if scaler is not None and name == "last" else {}
        save_checkpoint(ckpt_dir, name, model.persistent_state(), optimizer if name == "last" else None,
                        {"config": cfg, "run": run, **extra}, run["step"])

    # ---- loop -----------------------------------------------------------------------------
    # Per-step sums kept as device tensors and folded into `run` (plain numbers, checkpointed) at
    # checkpoints and epoch ends: the steady-state step has no host synchronisation.
    pending = {"epoch_loss": 0.0, "epoch_ce": 0.0, "restarts": 0}

    def settle() -> None:
        for key, value in pending.items():
            run[key] += int(value) if key == "restarts" else float(value)
            pending[key] = 0

    sizes = feature_sizes(sets["train"].features)  # bucketing key (frames per utterance)
    max_frames = None if c.max_seconds is None else max(1, round(c.max_seconds * 1000 / FRAME_SHIFT_MS))
    step_batch = c.batch_size * c.grad_accum  # utterances per optimizer step
    steps_per_epoch = -(-len(sizes) // step_batch)
    total_steps = c.epochs * steps_per_epoch
    while run["epoch"] < c.epochs and not run["stopped_early"]:
        epoch = run["epoch"]
        epoch_started = time.perf_counter()
        batches = epoch_batches(sizes, step_batch, c.seed, epoch, bucket=c.bucket, max_frames=max_frames)
        loader = batch_loader(sets["train"], batches[run["step_in_epoch"]:], workers=c.workers,
                              seed=c.seed * 1_000_003 + epoch, pin_memory=device.type == "cuda")
        bar = tqdm(loader, total=steps_per_epoch, initial=run["step_in_epoch"], desc=f"epoch {epoch + 1}/{c.epochs}",
                   unit="batch", disable=not (c.progress and dist.is_main), leave=False)
        for batch in bar:
            valid_frames, padded = padded_frames(batch, c.grad_accum)
            run["epoch_frames"] += valid_frames
            run["epoch_padded"] += padded
            factor = lr_factor(run["step"], total_steps, c.warmup_steps, c.lr_schedule)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            local = dist.begin_step(model, batch, c.seed * 1_000_003 + run["step"]).to(device)  # this rank's share
            result = dist.end_step(model, train_step(train_model, local, optimizer, dist.fisher_sync,
                                                     grad_accum=c.grad_accum, autocast=precision.autocast,
                                                     scaler=scaler, max_grad_norm=c.max_grad_norm),
                                   c.dead_patience)
            run["step"] += 1
            run["step_in_epoch"] += 1
            # on the device until read (settle): a float() here would wait for the GPU every step
            pending["epoch_loss"] = pending["epoch_loss"] + result.loss
            pending["epoch_ce"] = pending["epoch_ce"] + result.ce
            generator = torch.Generator(device=device).manual_seed(c.seed * 1_000_003 + run["step"])
            pending["restarts"] = pending["restarts"] + restart_dead_prototypes(model, optimizer, result,
                                                                                c.dead_patience, generator)
            if not bar.disable and run["step"] % PROGRESS_EVERY == 0:
                bar.set_postfix(loss=f"{float(result.loss):.3f}")
            if run["step"] % c.checkpoint_every == 0:
                settle()
                checkpoint()
            if c.stop_after_steps is not None and run["step"] >= c.stop_after_steps:
                settle()
                bar.close()  # abruptly, as a kill would: no checkpoint beyond the periodic ones
                logs.close()
                if dist.is_main:
                    log.info(f"stopped after step {run['step']} as asked (--stop-after-steps); the same flags "
                             "plus --resume continue the run")
                return {"interrupted": True, "step": run["step"], "epoch": epoch, "run_dir": str(run_dir),
                        "rank": dist.rank}

        settle()
        with precision.autocast():
            valid = evaluate(model, sets["valid"], classes, c.batch_size, device)
        padded_total = run["epoch_frames"] + run["epoch_padded"]
        run["history"].append({"epoch": epoch + 1, "step": run["step"],
                               "train_loss": run["epoch_loss"] / steps_per_epoch,
                               "train_ce": run["epoch_ce"] / steps_per_epoch,
                               "valid_loss": valid["loss"], "valid": valid,
                               # for loggers: share of padding in the batches fed to the model, the head's
                               # learning rate at the epoch's last step, seconds of this epoch in this process
                               "padding_fraction": run["epoch_padded"] / padded_total if padded_total else 0.0,
                               "lr": optimizer.param_groups[-1]["lr"],
                               "seconds": round(time.perf_counter() - epoch_started, 2)})
        improved = run["best"] is None or valid[c.select_metric] > run["best"]["value"]
        if improved:
            run["best"] = {"epoch": epoch + 1, "step": run["step"], "value": valid[c.select_metric]}
        logs.epoch(run["history"][-1], restarts=run["restarts"], lr=optimizer.param_groups[0]["lr"])
        stop = c.patience is not None and epoch + 1 - run["best"]["epoch"] >= c.patience
        if dist.is_main:
            log.info(f"epoch {epoch + 1}: train loss {run['history'][-1]['train_loss']:.4f} | valid WA "
                     f"{valid['wa']:.4f} UA {valid['ua']:.4f} F1 {valid['macro_f1']:.4f} | padding "
                     f"{run['history'][-1]['padding_fraction']:.1%}" + (" (best)" if improved else ""))
            if stop:
                log.info(f"early stop: no better valid {c.select_metric} for {c.patience} epochs")
        run.update(epoch=epoch + 1, step_in_epoch=0, epoch_loss=0.0, epoch_ce=0.0, epoch_frames=0, epoch_padded=0,
                   stopped_early=stop)
        if improved:
            checkpoint("best")
        checkpoint()

    # ---- evaluation of the best checkpoint ---------------------------------------------------
    dist.barrier()  # rank 0 has written the last "best"
    _, best_state, _, _ = load_checkpoint(ckpt_dir, "best")
    load_model_state(model, best_state)
    results = {
        "head": c.head, "name": _display_name(c), "protocol": split.describe(),
        "corpus": corpus.describe(),
        "select_metric": c.select_metric, "best_epoch": run["best"]["epoch"], "steps": run["step"],
        "prototype_restarts": run["restarts"], "kmeans_frames": run["kmeans_frames"],
        "precision": precision.name, "deterministic": torch.are_deterministic_algorithms_enabled(),
        "stopped_early": run["stopped_early"],
        "feature_cache": {"dtype": c.cache_dtype, "bytes": cache_bytes} if c.cache_features else None,
    }
    with precision.autocast():
        results["valid"] = evaluate(model, sets["valid"], classes, c.batch_size, device)
        results["test"] = evaluate(model, sets["test"], classes, c.batch_size, device)
    if not dist.is_main:
        return {**results, "rank": dist.rank}  # probing and outputs are rank 0's
    matrices = {results["name"]: results["test"]["confusion_matrix"]}

    # ---- prototype selection + linear probing (LPMN, section 3.3) -----------------------------
    if lpmn_layer(model) is not None and c.probe_epochs > 0:
        probe_results, probe = linear_probe(model, sets, classes, top_k=c.top_k, epochs=c.probe_epochs,
                                            lr=c.probe_lr, batch_size=c.batch_size, seed=c.seed,
                                            select_metric=c.select_metric, device=device,
                                            reading=c.probe_reading, importance=c.importance,
                                            standardize=c.probe_standardize)
        probe_results["name"] = f"{results['name']}-{c.top_k}"
        results["probe"] = probe_results
        head_state = {f"head.{k}": v for k, v in probe.head.state_dict().items()}
        save_checkpoint(ckpt_dir, "probe", head_state, None, {"config": cfg, "top_k": c.top_k}, run["step"])
        probe.save_pretrained(run_dir / "model-probe", classes, {
            "name": probe_results["name"], "top_k": c.top_k, "train_config": cfg,  # for lpmn-predict
            "evaluation": run_evaluation(results, probe_results), "provenance": _provenance(c, device, started, precision)})
        if c.bundle_backbone:  # the pretrained encoder inside the folder: it loads anywhere
            bundle_backbone(probe.backbone, run_dir / "model-probe")
        matrices[probe_results["name"]] = probe_results["test"]["confusion_matrix"]

    # ---- outputs ----------------------------------------------------------------------------
    results["history"] = run["history"]
    results["config"] = cfg
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["provenance"] = _provenance(c, device, started, precision)
    logs.close()
    model.save_pretrained(run_dir / "model", classes, {"name": results["name"], "top_k": c.top_k, "train_config": cfg,
                                                       "evaluation": run_evaluation(results),
                                                       "provenance": results["provenance"]})
    if c.bundle_backbone:  # the probe shares this backbone: hard links to its copy where it has one
        bundle_backbone(model.backbone, run_dir / "model", copy_from=run_dir / "model-probe")
    _dump(run_dir / "metrics.json", results)
    plot_confusion(matrices, classes, run_dir / "confusion.png")
    plot_curves(run["history"], c.select_metric, run_dir / "curves.png")
    for name, m in [(results["name"], results["test"])] + (
            [(results["probe"]["name"], results["probe"]["test"])] if "probe" in results else []):
        log.info(f"test {name} (best epoch {results['best_epoch']} on valid {c.select_metric}"
                 + (", stopped early" if results["stopped_early"] else "") + f"): WA {m['wa']:.4f} UA {m['ua']:.4f} "
                 f"macro F1 {m['macro_f1']:.4f} weighted F1 {m['weighted_f1']:.4f}")
    log.info(f"results in {run_dir} ({results['seconds']} s)")
    return results


def _provenance(c: TrainConfig, device: torch.device, started: float, precision: Precision) -> dict:
    """lpmn_fast.provenance of this run: code, libraries, device, precision, kernel, wall time so far."""
    from ..ops.prototype_mil import resolve_backend

    kernel = {"asked": c.kernel, "used": resolve_backend(c.kernel, device)} if c.head == "lpmn" else None
    return provenance(device=device, precision=precision.name, kernel=kernel,
                      seconds=time.perf_counter() - started)


def _display_name(c: TrainConfig) -> str:
    return f"LPMN-{c.num_prototypes}" if c.head == "lpmn" else c.head.upper()


__all__ = ["train"]
