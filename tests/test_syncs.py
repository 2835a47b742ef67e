"""benchmarks/syncs.py: its counter sees what makes a CUDA host wait, and the training step has none."""

from __future__ import annotations

import pytest
import torch

from benchmarks.syncs import SyncCounter, count_step, main


def test_counter_sees_each_kind_of_sync_and_ignores_async_work():
    x = torch.randn(4, 3)
    mask = x[:, 0] > 0
    with SyncCounter() as counter:
        x[mask]  # boolean indexing: the output's size is on the device
        x.sum().item()
        torch.equal(x, x)
        torch.nonzero(mask)
        x[torch.tensor([0, 2])] = 1.0  # integer indices: no sync
        torch.where(mask[:, None], x, 0.0).sum()
        torch._assert_async(torch.tensor(True))
    assert dict(counter.counts) == {"index (bool mask)": 1, "_local_scalar_dense": 1, "equal": 1, "nonzero": 1}


def test_host_tensors_are_not_counted():
    step = torch.tensor(3.0)
    with SyncCounter(host=(step,)) as counter:
        float(step)
    assert not counter.counts


@pytest.mark.parametrize("head", ["lpmn", "ap", "mp"])
def test_training_step_has_no_host_sync(head):
    assert dict(count_step(head)) == {}


def test_command_line_prints_the_counts(capsys):
    assert main(["--heads", "mp"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "host syncs per training step: mp 0"
