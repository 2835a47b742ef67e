"""Multi-process training under torchrun: DistributedDataParallel that computes the one-process run.

    torchrun --nproc-per-node N -m lpmn_fast.train [lpmn-train flags]   # NCCL on GPUs, gloo on CPU

``--batch-size`` is the global batch. Every rank builds the same global batch from the same
(seed, epoch) order and trains on its contiguous share (``tensor_split``: sizes differ by at
most one), so N processes take the optimiser step one process would take on the whole batch:

* Losses. DDP averages gradients over ranks, the global mean only for equal shares. Here a DDP
  communication hook weights rank r's gradient by its share n_r / N of the utterances, which
  makes the per-utterance means (cross-entropy, valence MSE) global means; the quantization loss
  (eq. 1) averages over frames, so for the step the LPMN head's quant_weight is scaled by
  (F_r / F) / (n_r / N), F_r the rank's valid frames. A rank left without utterances (a last
  global batch smaller than the world) trains on a copy of one with weight 0.
* Fisher importance (eq. 4). A rank's squared per-frame gradients are of its own mean loss,
  N / n_r times the global one per frame: ``fisher_sync`` rescales them by (n_r / N)^2 and
  all-reduces them with the utterance and frame counts before the EMA update.
* Dead-prototype restarts. The idle record is all-reduced (MIN: used on any rank is used); when
  a prototype is due, the frames of the whole global batch are gathered in rank order (= batch
  order), so every rank draws the replacement one process would.
* k-means codebook: rank 0 computes it and broadcasts the model state.
* Evaluation: every rank evaluates the full validation and test sets (same weights, same
  result, no communication). Checkpoints, metrics, plots, probing and the exported models are
  rank 0's; the corpus and feature cache are made by rank 0 before the others read them.
* Randomness: each step every rank reseeds torch from (step seed, rank), so dropout masks differ
  between ranks and a resumed run (every rank reads the checkpoint rank 0 wrote) replays them
  exactly. With dropout the masks cannot match one process's; without, the runs agree.
"""

from __future__ import annotations

import atexit
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ..models import LPMNHead, masked_frames
from ..nn import PrototypeMIL
from .batching import Batch
from .steps import StepResult, unwrap


@dataclass
class _Share:
    """This rank's part of the current global batch."""

    weight: float  # n_r / N, 0 for a padding rank
    utterances: int  # n_r (0 for a padding rank)
    frames: int  # F_r
    global_utterances: int
    quant_weight: float | None  # the head's own weight, restored after the step
    idle_before: torch.Tensor | None


class Distributed:
    """The process group as the training loop sees it; with one process every method is a no-op."""

    def __init__(self, rank: int = 0, world: int = 1, device: torch.device = torch.device("cpu")):
        self.rank, self.world, self.device = rank, world, device
        self._share: _Share | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # ---- coordination --------------------------------------------------------------------
    def barrier(self) -> None:
        if self.active and self.device.type == "cuda":
            dist.barrier(device_ids=[self.device.index])
        elif self.active:
            dist.barrier()

    def wait_for_main(self) -> None:
        """Ranks > 0 wait here until rank 0 calls :meth:`main_done` (it prepares shared files first)."""
        if not self.is_main:
            self.barrier()

    def main_done(self) -> None:
        if self.is_main:
            self.barrier()

    def broadcast_model(self, model: torch.nn.Module) -> None:
        """Rank 0's parameters and buffers (k-means codebook, a resumed state) to every rank."""
        if self.active:
            for tensor in model.persistent_state().values():
                dist.broadcast(tensor, src=0)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module to train: DDP with share-weighted gradient averaging, or ``model`` itself."""
        if not self.active:
            return model
        # No buffer broadcast at forward: rank 0's idle record would overwrite the others' before the
        # all-reduce; end_step and fisher_sync keep the buffers equal instead.
        no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in
                   inspect.signature(DistributedDataParallel).parameters else {"broadcast_buffers": False})
        ddp = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                      **no_sync)
        ddp.register_comm_hook(self, _weighted_allreduce)
        return ddp

    # ---- one training step -------------------------------------------------------------------
    def begin_step(self, model: torch.nn.Module, batch: Batch, step_seed: int) -> Batch:
        """This rank's share of the global ``batch``; sets the step's loss weights and RNG."""
        if not self.active:
            return batch  # one process: the RNG stream the checkpoint saves and restores
        torch.manual_seed(step_seed * 1009 + self.rank)  # a function of the step, hence replayed on resume
        N = len(batch.lengths)
        sizes = [len(part) for part in torch.arange(N).tensor_split(self.world)]
        lo = sum(sizes[:self.rank])
        hi = lo + sizes[self.rank]
        padding = hi == lo
        local = _rows(batch, 0, 1) if padding else _rows(batch, lo, hi)
        n, frames = (0, 0) if padding else (hi - lo, int(local.lengths.sum()))
        head = _lpmn_head(model)
        share = _Share(n / N, n, frames, N, None, None)
        if head is not None:
            share.quant_weight, share.idle_before = head.quant_weight, head.idle_steps.clone()
            if not padding:
                head.quant_weight = share.quant_weight * (frames / int(batch.lengths.sum())) / (n / N)
        self._share = share
        return local

    @property
    def fisher_sync(self):
        """For ``train_step``: global Fisher accumulators before the EMA update (None with one process)."""
        return self._sync_fisher if self.active else None

    def _sync_fisher(self, mil: PrototypeMIL) -> None:
        s = self._share
        scale = (s.utterances / s.global_utterances) ** 2
        counts = torch.tensor([s.utterances, s.frames], dtype=torch.float64, device=mil.fisher_grad_sq.device)
        packed = torch.cat([mil.fisher_grad_sq.double() * scale, counts])
        dist.all_reduce(packed)
        mil.fisher_grad_sq.copy_(packed[:-2])
        mil.fisher_utterances.fill_(packed[-2])
        mil.fisher_frames.fill_(packed[-1])

    def end_step(self, model: torch.nn.Module, result: StepResult, patience: int) -> StepResult:
        """Agree on the idle record; report the global batch's losses; when a prototype is due a
        restart, hand back the whole global batch's frames (rank order = batch order)."""
        if not self.active:
            return result
        s, head = self._share, _lpmn_head(model)
        losses = [result.loss, result.ce] + ([result.mse] if result.mse is not None else [])
        totals = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in losses]) * s.weight
        dist.all_reduce(totals)
        update = {"loss": float(totals[0]), "ce": float(totals[1])}
        if len(losses) == 3:
            update["mse"] = float(totals[2])
        if head is not None:
            head.quant_weight = s.quant_weight
            if s.utterances == 0:  # the padding copy used no prototype
                head.idle_steps.copy_(s.idle_before + 1)
            dist.all_reduce(head.idle_steps, op=dist.ReduceOp.MIN)
            if patience > 0 and bool((head.idle_steps >= patience).any()):
                mine = masked_frames(result.frames, result.lengths)
                frames = gather_rows(mine if s.utterances else mine[:0])  # not the padding copy's frames
                update["frames"] = frames[None]
                update["lengths"] = torch.tensor([frames.shape[0]], device=frames.device)
        self._share = None
        return result._replace(**update)


def _weighted_allreduce(state, bucket):  # no annotations: DDP checks them, and they are strings here
    """DDP comm hook: sum over ranks of (share x gradient), instead of the mean of gradients."""
    tensor = bucket.buffer().mul_(state._share.weight)
    return dist.all_reduce(tensor, async_op=True).get_future().then(lambda fut: fut.value()[0])


def _rows(batch: Batch, lo: int, hi: int) -> Batch:
    """Rows lo:hi of a padded batch, trimmed to their longest utterance."""
    part = batch._replace(**{k: v[lo:hi] for k, v in batch._asdict().items() if v is not None})
    return part._replace(feats=part.feats[:, :int(part.lengths.max())])


def _lpmn_head(model: torch.nn.Module) -> LPMNHead | None:
    head = unwrap(model).head
    return head if isinstance(head, LPMNHead) else None


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """Concatenation in rank order of every rank's ``x`` (N_r, C); N_r may differ."""
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    longest = int(max(counts))
    padded = torch.zeros(longest, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[:x.shape[0]] = x
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(n)] for p, n in zip(parts, counts)])


def setup_distributed(device: torch.device) -> Distributed:
    """The process group of a torchrun launch (WORLD_SIZE > 1), initialised once per process; else one process.

    On CUDA each rank takes GPU LOCAL_RANK and NCCL; on CPU, gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(device=device)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
        atexit.register(_destroy)
    return Distributed(rank, world, device)


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["Distributed", "gather_rows", "setup_distributed"]
