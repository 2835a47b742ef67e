"""Host synchronisations per training step, counted on the CPU (issue 21).

    python -m benchmarks.syncs            # ends with "host syncs per training step: lpmn N, ap N, mp N"

One training step of each head (lpmn-train's: forward, cross-entropy + eq. (1), backward, the Fisher
update of eq. (4), Adam, the dead-prototype restart check) runs under a dispatch mode that counts the
operators which, on CUDA, make the host wait for the device: a copy of a value to the host
(``_local_scalar_dense``: item(), float(), int(), bool()), ``equal``, ``is_nonzero``, ``nonzero``,
``masked_select``, indexing or index_put with a boolean mask (its output size lives on the device),
``unique``, ``bincount``, ``histc``, ``repeat_interleave`` without ``output_size``, and copies to
the CPU. Values that live on the host on a GPU too are not counted: Adam's step counters (kept on
the CPU unless ``capturable``). The step is counted after one warm-up step (lazy state, as in
steady-state training). Exit code 1 when a head's count is not 0.

On a GPU the same step runs under ``torch.cuda.set_sync_debug_mode("error")`` in
tests/test_triton_gpu.py, which is the device's own word; this count is the rehearsal of it.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

# Operators that wait for the device on CUDA whatever their arguments.
ALWAYS_SYNC = {
    aten._local_scalar_dense.default, aten.equal.default, aten.is_nonzero.default,
    aten.nonzero.default, aten.masked_select.default, aten.unique_dim.default, aten._unique2.default,
    aten._unique.default, aten.unique_consecutive.default, aten.bincount.default, aten.histc.default,
    aten.argwhere.default,
}


# Functions whose CPU branch reads values on the host while their CUDA branch does not (the count is
# of what a CUDA step would do): (file name, function).
CPU_ONLY_BRANCHES = {
    ("validation.py", "_check_length_range"),  # on CUDA: torch._assert_async, no read-back
}


def _in_cpu_only_branch() -> bool:
    return any((f.filename.rsplit("/", 1)[-1], f.name) in CPU_ONLY_BRANCHES for f in traceback.extract_stack())


def _caller() -> str:
    """The innermost frame of lpmn_fast (else of anything but this file and torch's dispatch)."""
    frames = [f for f in traceback.extract_stack()[:-3] if not f.filename.endswith(("syncs.py", "_python_dispatch.py"))]
    ours = [f for f in frames if "lpmn_fast" in f.filename]
    f = (ours or frames)[-1]
    return f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:{f.lineno} ({f.line})"


def _has_bool_index(indices) -> bool:
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices if i is not None)


class SyncCounter(TorchDispatchMode):
    """Counts (by operator name) the calls that would synchronise with a CUDA device.

    ``host`` holds tensors that stay on the host on a GPU too (their reads are free)."""

    def __init__(self, host: tuple[torch.Tensor, ...] = ()):
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.host = {t.data_ptr() for t in host}
        self.exempt: Counter[str] = Counter()  # in CPU_ONLY_BRANCHES: not counted
        self.where: Counter[str] = Counter()  # "op at file:line" of the innermost lpmn_fast/torch frame

    def _on_host(self, args) -> bool:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        return bool(tensors) and all(t.data_ptr() in self.host for t in tensors)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket.__name__)
        sync = False
        if func in ALWAYS_SYNC:
            sync = not self._on_host(args)
        elif func.overloadpacket in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_):
            sync = _has_bool_index(args[1])
            name += " (bool mask)"
        elif func.overloadpacket is aten.repeat_interleave:
            sync = kwargs.get("output_size") is None and len(args) >= 1 and isinstance(args[0], torch.Tensor) \
                and not isinstance(args[1] if len(args) > 1 else None, int)
        elif func.overloadpacket in (aten._to_copy, aten.to) and kwargs.get("device") is not None:
            sync = torch.device(kwargs["device"]).type == "cpu" and kwargs.get("non_blocking") is not True
            name += " (to cpu)"
        if sync and _in_cpu_only_branch():
            self.exempt[name] += 1
        elif sync:
            self.counts[name] += 1
            self.where[f"{name} at {_caller()}"] += 1
        return func(*args, **kwargs)


def steady_state_step(head: str, device: torch.device | str = "cpu", kernel: str = "auto", seed: int = 0):
    """A closure running one lpmn-train step of ``head`` on a small SERModel (fbank conv encoder on
    cached features, 4 utterances of ragged length) and returning its StepResult: train_step, then
    the dead-prototype restart check, as the loop does every step. Also the optimizer (``.optimizer``)."""
    from lpmn_fast.training import make_config, resolve
    from lpmn_fast.training.batching import Batch
    from lpmn_fast.training.build import build_model, build_optimizer
    from lpmn_fast.training.steps import restart_dead_prototypes, train_step

    device = torch.device(device)
    c = resolve(make_config(head=head, kernel=kernel, backbone="fbank", encoder_hidden=16, fbank_mel_bins=16,
                            num_prototypes=8, top_k=4, run_dir="unused", progress=False, dead_patience=1))
    torch.manual_seed(seed)
    model = build_model(c, 4).to(device)
    optimizer = build_optimizer(c, model)
    g = torch.Generator().manual_seed(seed)
    B, T = 4, 30
    lengths = torch.tensor([30, 22, 17, 9])
    feats = torch.randn(B, T, c.fbank_mel_bins, generator=g) * (torch.arange(T) < lengths[:, None])[..., None]
    labels = torch.randint(0, 4, (B,), generator=g)
    batch = Batch(feats, lengths, labels, torch.arange(B)).to(device)
    generator = torch.Generator(device=device).manual_seed(seed + 1)

    def step():
        result = train_step(model, batch, optimizer)
        restart_dead_prototypes(model, optimizer, result, c.dead_patience, generator)
        return result

    step.optimizer = optimizer
    return step


def count_step(head: str, where: bool = False) -> Counter[str]:
    """The sync-forcing operators of one steady-state training step of ``head`` on the CPU (with
    ``where``: keyed by operator and the source line that called it)."""
    step = steady_state_step(head)
    step()  # warm-up: Adam's state, lazy buffers
    host = tuple(s["step"] for s in step.optimizer.state.values() if isinstance(s.get("step"), torch.Tensor))
    with SyncCounter(host) as counter:
        step()
    return counter.where if where else counter.counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heads", nargs="+", default=["lpmn", "ap", "mp"])
    parser.add_argument("--where", action="store_true", help="name the source line of each sync")
    args = parser.parse_args(argv)
    totals = {}
    for head in args.heads:
        counts = count_step(head, args.where)
        totals[head] = sum(counts.values())
        detail = ", ".join(f"{name} x{n}" for name, n in counts.most_common()) or "none"
        print(f"{head}: {detail}")
    print("host syncs per training step: " + ", ".join(f"{h} {n}" for h, n in totals.items()))
    return 1 if any(totals.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
