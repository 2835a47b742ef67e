"""torchrun-style training: 2 gloo processes on CPU train what 1 process trains on the same global batch.

The ranks are spawned with torch.multiprocessing and given the environment torchrun gives its
workers (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), then run the same ``train``.
The tiny set-up exercises every part that could break the equivalence: global batches of 5 split
3 + 2 (unequal shares, frame counts differing too), a last global batch of 1 utterance (rank 1
trains a zero-weight copy), dead-prototype restarts every step they are due (frames gathered
across ranks), k-means on rank 0, Fisher EMA and evaluation. Dropout is 0 there: per-rank
dropout masks cannot match one process's. A stop + resume under 2 processes, with dropout,
must replay the uninterrupted 2-process run exactly.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from training_fixtures import write_tiny_corpus

import lpmn_fast.training.corpus as training_corpus
from lpmn_fast.training import make_config, train
from lpmn_fast.training.checkpoint import load_checkpoint

# 16 training utterances in global batches of 5: 5, 5, 5, 1 per epoch.
TINY = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2, lr=1e-2, batch_size=5,
            epochs=2, probe_epochs=2, kmeans_frames=500, checkpoint_every=3, progress=False, test_session=3,
            dropout=0.0, dead_patience=1, threads=1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, corpus, runs: list[dict]) -> None:
    """One torchrun worker: the environment torchrun sets, then train() for each run in turn."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    training_corpus.load_corpus = lambda config: corpus
    for fields in runs:
        result = train(make_config(**fields))
        assert result.get("rank", 0) == rank


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Run directories of: 1 process; 2 processes; with dropout, 2 processes, and 2 processes stopped
    after step 7 (its last checkpoint: step 6) and resumed."""
    root = tmp_path_factory.mktemp("ddp")
    corpus = write_tiny_corpus(root / "corpus")
    common = {**TINY, "cache_dir": str(root / "cache")}
    with pytest.MonkeyPatch.context() as m:
        m.setattr(training_corpus, "load_corpus", lambda config: corpus)
        train(make_config(**common, run_dir=str(root / "one")))  # also fills the feature cache
    dropout = {**common, "dropout": 0.1}
    two = [{**common, "run_dir": str(root / "two")},
           {**dropout, "run_dir": str(root / "two-dropout")},
           {**dropout, "run_dir": str(root / "resumed"), "stop_after_steps": 7},
           {**dropout, "run_dir": str(root / "resumed"), "resume": True}]
    mp.spawn(_rank, args=(2, _free_port(), corpus, two), nprocs=2, join=True)
    return root


def _last(run_dir) -> dict[str, torch.Tensor]:
    return load_checkpoint(run_dir / "checkpoints", "last")[1]


def test_two_processes_train_the_one_process_model(runs):
    one, two = _last(runs / "one"), _last(runs / "two")
    assert one.keys() == two.keys()
    # Prototypes, classifier, encoder; the Fisher EMA (eq. 4); summation order differs, nothing else.
    for name in one:
        if one[name].is_floating_point():
            torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
        else:
            assert torch.equal(two[name], one[name]), name  # idle record, Fisher update count
    assert int(one["head.mil.fisher_updates"]) == 8  # 2 epochs x 4 global batches, padded one included


def test_two_processes_log_evaluate_and_restart_alike(runs):
    one = json.loads((runs / "one" / "metrics.json").read_text())
    two = json.loads((runs / "two" / "metrics.json").read_text())
    assert one["prototype_restarts"] > 0 and two["prototype_restarts"] == one["prototype_restarts"]
    for a, b in zip(one["history"], two["history"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)  # global-batch losses
        assert b["valid"]["confusion_matrix"] == a["valid"]["confusion_matrix"]
    assert two["test"]["confusion_matrix"] == one["test"]["confusion_matrix"]
    assert two["probe"]["selected"] == one["probe"]["selected"]
    for name in ("model", "model-probe"):  # exported by rank 0
        assert (runs / "two" / name / "model.safetensors").is_file()


def test_resume_under_two_processes_replays_the_run(runs):
    resumed, two = _last(runs / "resumed"), _last(runs / "two-dropout")
    for name in two:
        assert torch.equal(resumed[name], two[name]), name
    a = json.loads((runs / "two-dropout" / "metrics.json").read_text())
    b = json.loads((runs / "resumed" / "metrics.json").read_text())
    untimed = [[{k: v for k, v in epoch.items() if k != "seconds"} for epoch in run["history"]] for run in (a, b)]
    assert untimed[0] == untimed[1] and a["test"] == b["test"]
