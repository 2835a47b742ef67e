"""Training: one step per head and kernel, full tiny runs, resume equivalence, checkpoints, probing, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from training_fixtures import TINY, save_tiny_hubert, tiny_config

from lpmn_fast.train import main as cli_main
from lpmn_fast.training import make_config, resolve, train, train_step
from lpmn_fast.training.batching import collate
from lpmn_fast.training.build import build_model, build_optimizer
from lpmn_fast.training.checkpoint import load_checkpoint, load_model_state, read_checkpoint_json, save_checkpoint
from lpmn_fast.training.probe import build_probe_model, linear_probe
from lpmn_fast.training.steps import LabelledSet, restart_dead_prototypes

_config = tiny_config


def _batch(backbone, corpus, n=4):
    feats = [backbone.prepare(torch.randn(int(16000 * (0.3 + 0.1 * i)))) for i in range(n)]
    return collate(feats, [i % 4 for i in range(n)], list(range(n)))


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("head", ["lpmn", "ap", "mp"])
def test_one_training_step_per_head_and_kernel(tmp_path, corpus, head, kernel):
    c = resolve(_config(tmp_path, head=head, kernel=kernel))
    torch.manual_seed(0)
    model = build_model(c, 4)
    batch = _batch(model.backbone, corpus)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(c, model)
    try:
        result = train_step(model, batch, optimizer)
    except NotImplementedError as error:
        pytest.skip(f"kernel={kernel} not available yet: {error}")
    assert torch.isfinite(torch.as_tensor(result.loss)) and result.loss >= result.ce > 0
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "head.classifier.weight" in changed and "backbone.convs.0.weight" in changed
    if head == "lpmn":
        assert "head.mil.prototypes" in changed
        assert int(model.head.mil.fisher_updates) == 1  # eq. (4) EMA updated after backward
        assert model.head.mil.fisher_importance.sum() > 0
        assert result.loss > result.ce  # the quantization loss is part of the objective


def test_triton_and_torch_kernels_train_alike(tmp_path, corpus):
    steps = {}
    for kernel in ("torch", "triton"):
        c = resolve(_config(tmp_path, kernel=kernel))
        torch.manual_seed(0)
        model = build_model(c, 4)
        batch = _batch(model.backbone, corpus)
        optimizer = build_optimizer(c, model)
        try:
            losses = [train_step(model, batch, optimizer).loss for _ in range(2)]
        except NotImplementedError as error:
            pytest.skip(f"kernel=triton not available yet: {error}")
        steps[kernel] = (losses, model.head.mil.prototypes.detach().clone())
    torch.testing.assert_close(torch.tensor(steps["triton"][0]), torch.tensor(steps["torch"][0]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(steps["triton"][1], steps["torch"][1], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("head", ["lpmn", "ap"])
def test_full_run_writes_its_outputs(tmp_path, use_corpus, head):
    results = train(_config(tmp_path, head=head))
    run = tmp_path / "run"
    for name in ("metrics.json", "confusion.png", "curves.png", "config.yaml", "checkpoints/best.json"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["test"] == results["test"]
    for key in ("wa", "ua", "macro_f1", "weighted_f1", "confusion_matrix"):
        assert key in results["test"]
    assert sum(map(sum, results["test"]["confusion_matrix"])) == results["protocol"]["test"] == 4
    assert len(results["history"]) == 2 and 1 <= results["best_epoch"] <= 2
    assert ("probe" in results) == (head == "lpmn")
    if head == "lpmn":
        probe = results["probe"]
        assert probe["name"] == "LPMN-8-4" and len(probe["selected"]) == 4
        assert read_checkpoint_json(run / "checkpoints", "probe") is not None
    # only the latest tensor file of each checkpoint survives
    tensor_files = sorted(p.name.split("-")[0] for p in (run / "checkpoints").glob("*.safetensors"))
    assert tensor_files == (["best", "last", "probe"] if head == "lpmn" else ["best", "last"])


def _without_timing(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]


# Random batches are the fbank default; the last case also reads with 2 worker processes, crops to
# 0.5 s (the tiny corpus has 0.4-0.8 s) and accumulates 2 micro-batches of 2 per step.
@pytest.mark.parametrize("fields", [{"bucket": True}, {},
                                    {"bucket": True, "workers": 2, "max_seconds": 0.5, "grad_accum": 2,
                                     "batch_size": 2}],
                         ids=["buckets", "random-batches", "workers-crops-accumulation"])
def test_resume_ends_with_the_same_result(tmp_path, use_corpus, fields):
    full = train(_config(tmp_path / "a", **fields))
    # 16 training utterances / batch 4 = 4 steps per epoch; checkpoints after steps 3, 4 (epoch end)
    # and 6. Stopping abruptly after step 7 (as a kill would) leaves the mid-epoch checkpoint of
    # step 6, so the resumed run replays step 7 from there.
    stopped = train(_config(tmp_path / "b", stop_after_steps=7, **fields))
    assert stopped["interrupted"] and stopped["step"] == 7
    last = read_checkpoint_json(tmp_path / "b" / "run" / "checkpoints", "last")["run"]
    assert (last["step"], last["epoch"], last["step_in_epoch"]) == (6, 1, 2)
    resumed = train(_config(tmp_path / "b", resume=True, **fields))
    assert _without_timing(resumed["history"]) == _without_timing(full["history"])
    for key in ("test", "valid", "probe", "best_epoch", "steps"):
        assert resumed[key] == full[key], key
    _, a, _, _ = load_checkpoint(tmp_path / "a" / "run" / "checkpoints", "last")
    _, b, _, _ = load_checkpoint(tmp_path / "b" / "run" / "checkpoints", "last")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_a_changed_config_and_a_missing_run(tmp_path, use_corpus):
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        train(_config(tmp_path, resume=True))
    train(_config(tmp_path, stop_after_steps=3))  # checkpoint_every=3
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(_config(tmp_path))
    with pytest.raises(ValueError, match=r"config differs .*'lr'"):
        train(_config(tmp_path, resume=True, lr=0.5))


def test_checkpoint_round_trip(tmp_path, corpus):
    c = resolve(_config(tmp_path))
    torch.manual_seed(0)
    model = build_model(c, 4)
    optimizer = build_optimizer(c, model)
    batch = _batch(model.backbone, corpus)
    train_step(model, batch, optimizer)
    save_checkpoint(tmp_path / "ck", "last", model.persistent_state(), optimizer, {"note": "x"}, step=1)
    expected = train_step(model, batch, optimizer).loss  # what the next step gives

    torch.manual_seed(123)  # a different initialisation, overwritten by the checkpoint
    fresh = build_model(c, 4)
    fresh_optimizer = build_optimizer(c, fresh)
    meta, state, optim_state, rng = load_checkpoint(tmp_path / "ck", "last")
    load_model_state(fresh, state)
    fresh_optimizer.load_state_dict(optim_state)
    torch.set_rng_state(rng["rng/torch"])
    assert meta["note"] == "x" and meta["tensors"] == "last-step00000001.safetensors"
    assert int(fresh.head.mil.fisher_updates) == 1
    # restore the RNG of the moment of saving, then the next step must match (dropout included)
    torch.set_rng_state(load_checkpoint(tmp_path / "ck", "last")[3]["rng/torch"])
    assert float(train_step(fresh, batch, fresh_optimizer).loss) == float(expected)


def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path, corpus, monkeypatch):
    import lpmn_fast.training.checkpoint as ck

    model = build_model(resolve(_config(tmp_path, head="ap")), 4)
    save_checkpoint(tmp_path, "last", model.persistent_state(), None, {"step": 1}, step=1)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, "last", model.persistent_state(), None, {"step": 2}, step=2)
    meta, state, _, _ = load_checkpoint(tmp_path, "last")
    assert meta["step"] == 1 and state.keys() == model.persistent_state().keys()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last-step00000001.safetensors", "last.json"]


def test_dead_prototypes_restart_during_training(tmp_path, corpus):
    c = resolve(_config(tmp_path, dead_patience=2))
    torch.manual_seed(0)
    model = build_model(c, 4)
    optimizer = build_optimizer(c, model)
    batch = _batch(model.backbone, corpus)
    with torch.no_grad():
        # Prototypes +-e1, +-e2, +-e3, e4 leave no frame nearest to prototype 3 = the all-ones
        # direction, which the LayerNorm-ed frames (about zero mean over channels) are orthogonal to.
        eye = torch.eye(16)
        model.head.mil.prototypes.copy_(torch.stack([eye[0], -eye[0], eye[1], torch.ones(16), -eye[1], eye[2],
                                                     -eye[2], eye[3]]))
    for step in range(4):
        result = train_step(model, batch, optimizer)
        restarted = restart_dead_prototypes(model, optimizer, result, 2, torch.Generator().manual_seed(step))
        if restarted:
            break
    assert restarted == 1 and step == 1  # idle for 2 steps, then restarted
    assert model.head.idle_steps[3] == 0
    frames = result.frames[torch.arange(result.frames.shape[1]) < result.lengths[:, None]]
    restarted_p = model.head.mil.prototypes[3].detach()
    # --restart codebook (the default): a frame of this batch's direction at the live prototypes' norm
    cosines = torch.nn.functional.cosine_similarity(frames, restarted_p[None], dim=-1)
    assert cosines.max() > 1 - 1e-5
    live = model.head.mil.prototypes.detach()[[0, 1, 2, 4, 5, 6, 7]].norm(dim=-1)
    torch.testing.assert_close(restarted_p.norm(), live.mean(), rtol=0.05, atol=0)  # norms after the step
    assert model.head.mil.fisher_importance[3] == 0 and model.head.mil.fisher_direction[3] == 0
    assert optimizer.state[model.head.mil.prototypes]["exp_avg"][3].abs().max() == 0


def test_linear_probing_trains_only_the_new_classifier(tmp_path, corpus):
    c = resolve(_config(tmp_path))
    torch.manual_seed(0)
    model = build_model(c, 4)
    optimizer = build_optimizer(c, model)
    batch = _batch(model.backbone, corpus, n=8)
    for _ in range(3):
        train_step(model, batch, optimizer)
    frozen_before = {k: v.clone() for k, v in model.state_dict().items()}
    probe = build_probe_model(model, 4, 4)
    assert [n for n, p in probe.named_parameters() if p.requires_grad] == ["head.classifier.weight",
                                                                            "head.classifier.bias"]
    assert probe.head.selected.tolist() == model.head.mil.select_top(4).tolist()
    feats = [batch.feats[i, : batch.lengths[i]] for i in range(8)]
    data = LabelledSet(feats, batch.labels, tuple(map(str, range(8))))
    results, trained = linear_probe(model, {"train": data, "valid": data, "test": data}, ["a", "b", "c", "d"],
                                    top_k=4, epochs=5, lr=0.1, batch_size=4, seed=0, select_metric="ua",
                                    device=torch.device("cpu"))
    assert all(torch.equal(v, frozen_before[k]) for k, v in model.state_dict().items())
    torch.testing.assert_close(trained.head.mil.prototypes, model.head.mil.prototypes[probe.head.selected].detach())
    assert results["top_k"] == 4 and set(results) >= {"valid", "test", "best_epoch", "selected"}


@pytest.mark.parametrize("reading", ["columns", "renormalise"])
@pytest.mark.parametrize("standardize", [True, False])
def test_linear_probe_readings_and_standardisation(tmp_path, corpus, reading, standardize):
    c = resolve(_config(tmp_path))
    torch.manual_seed(0)
    model = build_model(c, 4)
    optimizer = build_optimizer(c, model)
    batch = _batch(model.backbone, corpus, n=8)
    for _ in range(3):
        train_step(model, batch, optimizer)
    feats = [batch.feats[i, : batch.lengths[i]] for i in range(8)]
    data = LabelledSet(feats, batch.labels, tuple(map(str, range(8))))
    results, trained = linear_probe(model, {"train": data, "valid": data, "test": data}, ["a", "b", "c", "d"],
                                    top_k=4, epochs=5, lr=0.1, batch_size=4, seed=0, select_metric="ua",
                                    device=torch.device("cpu"), reading=reading, standardize=standardize)
    assert (results["reading"], results["standardize"], results["importance"]) == (reading, standardize, "gradient")
    assert trained.head.reading == reading
    assert trained.head.mil.num_prototypes == (c.num_prototypes if reading == "columns" else 4)
    # the saved probe takes raw inputs (any standardisation folded into its weights) and scores as reported
    with torch.no_grad():
        preds = trained.eval()(batch.feats, batch.lengths).logits.argmax(-1)
    assert float((preds == batch.labels).float().mean()) == pytest.approx(results["test"]["wa"])


@pytest.mark.parametrize("fields, error, match", [
    ({"head": "attention"}, ValueError, "unknown head 'attention'"),
    ({"backbone": "wav2vec"}, ValueError, "unknown backbone 'wav2vec'"),
    ({"top_k": 9}, ValueError, r"top_k \(K' = 9\) must be in \[1, num_prototypes K = 8\]"),
    ({"backbone": "hubert"}, ValueError, "needs hubert_path"),
    ({"split": "random"}, ValueError, "unknown split"),
    ({"kernel": "cuda"}, ValueError, "unknown kernel"),
    ({"data": "iemocap"}, ValueError, "needs data_dir"),
    ({"resume": True, "run_dir": None}, ValueError, "resume needs run_dir"),
    ({"num_prototypes": 8, "top_k": 0}, ValueError, "top_k"),
])
def test_bad_configs_are_named(tmp_path, fields, error, match):
    with pytest.raises(error, match=match):
        resolve(_config(tmp_path, **fields))


def test_missing_hubert_path_is_named(tmp_path, use_corpus):
    with pytest.raises(FileNotFoundError, match="not-there"):
        train(_config(tmp_path, backbone="hubert", hubert_path=str(tmp_path / "not-there")))


def test_unknown_config_field():
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['heads'\]"):
        make_config(heads="lpmn")


def test_hubert_run_from_cache_equals_run_without_cache(tmp_path, use_corpus):
    hubert = save_tiny_hubert(tmp_path / "hubert")
    common = dict(backbone="hubert", hubert_path=str(hubert), hubert_layers=3, hubert_finetune_layers=[3],
                  epochs=1, batch_size=6, probe_epochs=2)
    cached = train(_config(tmp_path / "a", **common))
    on_the_fly = train(_config(tmp_path / "b", cache_features=False, **common))
    assert list((tmp_path / "a" / "cache" / "features").glob("*/*.safetensors"))
    assert not (tmp_path / "b" / "cache").exists()
    assert _without_timing(cached["history"]) == _without_timing(on_the_fly["history"])
    for key in ("test", "valid", "probe"):
        assert cached[key] == on_the_fly[key], key
    _, state, _, _ = load_checkpoint(tmp_path / "a" / "run" / "checkpoints", "last")
    assert not any(k.startswith("backbone.frozen.") for k in state)  # reloaded from hubert_path
    assert any(k.startswith("backbone.top.0.") for k in state)


def test_cli_help_names_every_field(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli_main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--kernel", "--resume", "--top-k", "--hubert-finetune-layers", "--config", "--select-metric"):
        assert flag in text


def test_cli_compares_heads_with_config_file(tmp_path, use_corpus, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("\n".join(f"{k}: {json.dumps(v)}" for k, v in TINY.items()) + "\nepochs: 5\n")
    code = cli_main(["--config", str(config), "--epochs", "1", "--head", "lpmn,ap,mp", "--cache-dir",
                     str(tmp_path / "cache"), "--run-dir", str(tmp_path / "runs")])
    assert code == 0
    out = capsys.readouterr().out
    for row in ("| LPMN-8 |", "| LPMN-8-4 |", "| AP |", "| MP |"):
        assert row in out
    summary = json.loads((tmp_path / "runs" / "summary.json").read_text())
    assert [s["head"] for s in summary] == ["lpmn", "ap", "mp"]
    assert all(s["config"]["epochs"] == 1 for s in [json.loads((tmp_path / "runs" / h / "metrics.json").read_text())
                                                     for h in ("lpmn", "ap", "mp")])  # the flag beat the file


def test_cli_reports_bad_config(capsys):
    assert cli_main(["--head", "lpmn", "--num-prototypes", "8", "--top-k", "20"]) == 2
    assert "top_k (K' = 20)" in capsys.readouterr().err


def test_synthetic_corpus_end_to_end(tmp_path):
    """The real path: the synthetic corpus generated on first use, read back by the IEMOCAP loader."""
    fields = {**TINY, "test_session": 5, "synthetic_utterances_per_speaker": 4, "epochs": 1}
    results = train(_config(tmp_path, **fields))
    assert (tmp_path / "cache" / "synthetic" / "u4-d0.5-seed0" / "synthetic_manifest.json").is_file()
    assert results["protocol"]["train"] == 32 and results["protocol"]["test"] == 4
    assert results["corpus"]["counts"] == {"neutral": 10, "happy": 10, "angry": 10, "sad": 10}
    again = train(_config(tmp_path, **fields, run_dir=str(tmp_path / "run2")))  # corpus and features reused
    assert again["test"] == results["test"]
