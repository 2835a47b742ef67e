"""MER2023 training on a fake release folder: six classes, a valence regressor trained with MSE beside
the classifier, k-fold protocol, metrics with valence MSE, linear probing with valence."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import mean_squared_error
from training_fixtures import write_fake_mer2023

from lpmn_fast.data.corpus import MER2023_CLASSES
from lpmn_fast.training import make_config, resolve, train, train_step
from lpmn_fast.training.batching import collate
from lpmn_fast.training.build import build_model, build_optimizer
from lpmn_fast.training.checkpoint import load_checkpoint
from lpmn_fast.training.corpus import load_corpus, prepare_data
from lpmn_fast.training.steps import evaluate, predict_all

TINY = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2, lr=1e-2, batch_size=8,
            epochs=1, probe_epochs=2, kmeans_frames=500, progress=False, test_session=1)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = tmp_path_factory.mktemp("mer2023")
    write_fake_mer2023(root)
    return root


def _config(tmp_path, release, **fields):
    return resolve(make_config(**{**TINY, "data": "mer2023", "data_dir": str(release),
                                  "cache_dir": str(tmp_path / "cache"), "run_dir": str(tmp_path / "run"), **fields}))


def test_mer2023_defaults_and_corpus(tmp_path, release):
    c = _config(tmp_path, release)
    assert (c.split, c.valence_weight) == ("kfold", 1.0)
    corpus = load_corpus(c)
    assert corpus.classes == MER2023_CLASSES and len(corpus.utterances) == 36
    assert all(u.valence is not None for u in corpus.utterances)
    same = load_corpus(_config(tmp_path, release, data_dir=None, label_csv=str(release / "train-label.csv"),
                               wav_dir=str(release / "wav")))
    assert same.utterances == corpus.utterances
    iemocap_like = resolve(make_config(**TINY, cache_dir=str(tmp_path), run_dir=str(tmp_path / "r")))
    assert (iemocap_like.split, iemocap_like.valence_weight) == ("loso-speaker", 0.0)


@pytest.mark.parametrize("fields, match", [
    ({"split": "loso"}, "MER2023 lacks; use split 'kfold'"),
    ({"data_dir": None}, "needs data_dir"),
    ({"valence_weight": -1.0}, "valence_weight must be >= 0"),
    ({"test_session": 6}, r"test_session \(the fold\) in \[1, folds\]"),
    ({"valid_fraction": 0.0}, r"valid_fraction must be in \(0, 1\)"),
])
def test_bad_mer2023_configs_are_named(tmp_path, release, fields, match):
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, release, **fields)


def test_valence_only_for_corpora_that_have_it(tmp_path):
    with pytest.raises(ValueError, match="has no valence labels"):
        resolve(make_config(**TINY, valence_weight=1.0, run_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="label_csv and wav_dir are mer2023's"):
        resolve(make_config(**TINY, wav_dir=str(tmp_path), run_dir=str(tmp_path)))


@pytest.mark.parametrize("head", ["lpmn", "ap", "mp"])
def test_one_step_trains_both_heads(tmp_path, release, head):
    c = _config(tmp_path, release, head=head, valence_weight=2.5, kernel="torch")
    data = prepare_data(c)
    torch.manual_seed(0)
    model = build_model(c, 6, data.backbone)
    train = data.sets["train"]
    batch = collate([train.features[i] for i in range(8)], train.labels[:8].tolist(), list(range(8)),
                    train.valence[:8])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train_step(model, batch, build_optimizer(c, model))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert {"head.classifier.weight", "head.valence.linear.weight", "backbone.convs.0.weight"} <= changed
    assert result.mse is not None and result.mse > 0
    if head != "lpmn":  # no auxiliary loss: the objective is exactly CE + weight x MSE
        assert float(result.loss) == pytest.approx(float(result.ce + 2.5 * result.mse), rel=1e-5)
    else:
        assert result.loss > result.ce + 2.5 * result.mse  # plus the quantization loss, eq. (1)


def test_evaluate_reports_the_valence_mse_of_the_predictions(tmp_path, release):
    c = _config(tmp_path, release, head="ap")
    data = prepare_data(c)
    model = build_model(c, 6, data.backbone)
    test = data.sets["test"]
    metrics = evaluate(model, test, MER2023_CLASSES, 8, torch.device("cpu"))
    _, _, valence = predict_all(model, test, 8, torch.device("cpu"))
    assert metrics["valence_mse"] == pytest.approx(mean_squared_error(test.valence.numpy(), valence.numpy()))
    assert {"macro_f1", "weighted_f1", "wa", "ua"} <= set(metrics)


def test_full_mer2023_run_with_probe_reports_mse(tmp_path, release):
    results = train(_config(tmp_path, release))
    assert results["protocol"]["protocol"].startswith("kfold(fold=1/5")
    assert sum(results["protocol"][k] for k in ("train", "valid", "test")) == 36
    for part in (results["test"], results["valid"], results["probe"]["test"]):
        assert part["valence_mse"] >= 0 and 0 <= part["weighted_f1"] <= 1
        assert len(part["confusion_matrix"]) == 6
    _, probe_state, _, _ = load_checkpoint(tmp_path / "run" / "checkpoints", "probe")
    assert "head.valence.linear.weight" in probe_state and probe_state["head.valence.linear.weight"].shape == (1, 4)


def test_valence_weight_zero_trains_classification_only(tmp_path, release):
    results = train(_config(tmp_path, release, head="ap", valence_weight=0.0))
    assert "valence_mse" not in results["test"] and "macro_f1" in results["test"]


def test_lpmn_train_cli_shows_the_valence_mse(tmp_path, release, capsys):
    from lpmn_fast.train import main

    args = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if k != "progress"]
    assert main(args + ["--no-progress", "--data", "mer2023", "--data-dir", str(release), "--head", "ap,mp",
                        "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "runs")]) == 0
    out = capsys.readouterr().out
    assert "| model | WA | UA | macro F1 | weighted F1 | valence MSE |" in out and "kfold(fold=1/5" in out
