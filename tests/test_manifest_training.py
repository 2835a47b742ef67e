"""Training and cross-validating your own corpus: a manifest of the synthetic corpus trains exactly as
``--data synthetic``; class folders and valence manifests train; lpmn-experiment runs a manifest's folds."""

from __future__ import annotations

import json

import pytest

from lpmn_fast import experiment
from lpmn_fast.data.iemocap import load_iemocap
from lpmn_fast.data.manifest import write_manifest
from lpmn_fast.data.synthetic import generate_corpus
from lpmn_fast.train import main as train_main
from lpmn_fast.training import make_config, train

TINY = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2, lr=1e-2, batch_size=8,
            epochs=1, probe_epochs=2, kmeans_frames=500, progress=False)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 40-utterance synthetic corpus (4 per speaker) and its manifest, written with relative paths."""
    root = tmp_path_factory.mktemp("synthetic")
    generate_corpus(root / "corpus", seed=0, utterances_per_speaker=4, difficulty=0.5, progress=False)
    corpus = load_iemocap(root / "corpus")
    manifest = write_manifest(corpus.utterances, root / "lists" / "synthetic.csv")
    return root, corpus, manifest


def test_a_manifest_of_the_synthetic_corpus_trains_like_data_synthetic(tmp_path, synthetic):
    root, corpus, manifest = synthetic
    common = {**TINY, "split": "loso-speaker", "test_session": 4, "cache_dir": str(tmp_path / "cache"), "seed": 3}
    direct = train(make_config(**common, data="synthetic", data_dir=str(root / "corpus"),
                               synthetic_utterances_per_speaker=4, run_dir=str(tmp_path / "direct")))
    listed = train(make_config(**common, data="manifest", manifest=str(manifest), classes="neutral,happy,angry,sad",
                               run_dir=str(tmp_path / "listed")))
    assert listed["protocol"] == direct["protocol"]  # the same split, named the same way
    assert listed["corpus"]["counts"] == direct["corpus"]["counts"]
    assert listed["corpus"]["details"]["columns"] == ["path", "label", "id", "speaker", "session"]
    for part in ("valid", "test"):
        assert listed[part] == direct[part]
    assert listed["probe"]["test"] == direct["probe"]["test"]
    assert [h["train_loss"] for h in listed["history"]] == [h["train_loss"] for h in direct["history"]]


def test_lpmn_experiment_runs_every_fold_of_a_manifest(tmp_path, synthetic, capsys):
    _, _, manifest = synthetic
    out = tmp_path / "cv"
    args = ["--data", "manifest", "--manifest", str(manifest), "--rows", "ap,lpmn", "--k", "8", "--epochs", "1",
            "--fbank-mel-bins", "16", "--encoder-hidden", "16", "--batch-size", "8", "--tau", "0.2",
            "--kmeans-frames", "500", "--no-progress", "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
            "--label-map", "happy:positive,angry:negative,sad:negative"]
    assert experiment.main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["split"] == "loso" and results["protocol"]["folds"] == [1, 2, 3, 4, 5]
    assert results["complete"]
    assert [(r["name"], r["folds_done"]) for r in results["table"]["rows"]] == [("AP", 5), ("LPMN-8", 5)]
    assert results["corpus"]["counts"] == {"negative": 20, "neutral": 10, "positive": 10}
    assert results["corpus"]["details"]["label_map"] == {"happy": "positive", "angry": "negative", "sad": "negative"}
    for fold in range(1, 6):
        metrics = json.loads((out / f"fold-{fold}" / "ap" / "metrics.json").read_text())
        assert metrics["protocol"]["protocol"] == f"loso(test_session={fold})"
    assert "leave-one-session-out" in (out / "results.md").read_text()


def test_class_folders_train_with_kfold(tmp_path, synthetic):
    _, corpus, _ = synthetic
    folders = tmp_path / "folders"
    for u in corpus.utterances:
        (folders / u.label).mkdir(parents=True, exist_ok=True)
        (folders / u.label / u.path.name).symlink_to(u.path)
    results = train(make_config(**TINY, data="folder", data_dir=str(folders), folds=4, test_session=2,
                                cache_dir=str(tmp_path / "cache"), run_dir=str(tmp_path / "run")))
    assert results["protocol"]["protocol"].startswith("kfold(fold=2/4")
    assert results["protocol"]["test"] == 10 and results["corpus"]["counts"] == {c: 10 for c in
                                                                                ("angry", "happy", "neutral", "sad")}


def test_a_valence_column_trains_the_regressor_and_a_split_column_splits(tmp_path, synthetic, capsys):
    _, corpus, _ = synthetic
    rows = ["path,label,valence,split,speaker"]
    valence = {"neutral": 0.0, "happy": 2.0, "angry": -2.0, "sad": -1.5}
    for i, u in enumerate(corpus.utterances):
        rows.append(f"{u.path},{u.label},{valence[u.label] + 0.01 * i},{('train', 'train', 'valid', 'test')[i % 4]},"
                    f"{u.speaker}")
    manifest = tmp_path / "v.csv"
    manifest.write_text("\n".join(rows) + "\n")
    assert train_main(["--data", "manifest", "--manifest", str(manifest), "--head", "ap", "--epochs", "1",
                       "--fbank-mel-bins", "16", "--encoder-hidden", "16", "--no-progress",
                       "--cache-dir", str(tmp_path / "cache"), "--run-dir", str(tmp_path / "run")]) == 0
    results = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert results["config"]["split"] == "column" and results["config"]["valence_weight"] == 1.0
    assert results["protocol"] == {"protocol": "column(the manifest's split column: train 20, valid 10, test 10)",
                                   "train": 20, "valid": 10, "test": 10}
    assert results["test"]["valence_mse"] >= 0
    assert "valence MSE" in capsys.readouterr().out


def test_bad_manifests_stop_lpmn_train_with_file_and_line(tmp_path, synthetic, capsys):
    _, corpus, _ = synthetic
    manifest = tmp_path / "bad.tsv"
    manifest.write_text("path\tlabel\n" + f"{corpus.utterances[0].path}\tneutral\n{corpus.utterances[1].path}\t\n")
    assert train_main(["--data", "manifest", "--manifest", str(manifest), "--split", "kfold",
                       "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert f"empty label for {corpus.utterances[1].path} at {manifest}:3" in capsys.readouterr().err


@pytest.mark.parametrize("source", ["folder", "speakers"])
def test_lpmn_experiment_cross_validates_class_folders_and_speaker_folds(tmp_path, synthetic, source):
    _, corpus, _ = synthetic
    if source == "folder":  # no speakers: stratified k-fold
        folders = tmp_path / "folders"
        for u in corpus.utterances:
            (folders / u.label).mkdir(parents=True, exist_ok=True)
            (folders / u.label / u.path.name).symlink_to(u.path)
        data, split = ["--data", "folder", "--data-dir", str(folders)], "kfold"
    else:  # a speaker column only: speaker-independent folds
        manifest = tmp_path / "speakers.jsonl"
        manifest.write_text("".join(json.dumps({"path": str(u.path), "label": u.label, "speaker": u.speaker}) + "\n"
                                    for u in corpus.utterances))
        data, split = ["--data", "manifest", "--manifest", str(manifest)], "speaker-kfold"
    out = tmp_path / "cv"
    assert experiment.main([*data, "--rows", "ap", "--epochs", "1", "--fbank-mel-bins", "16", "--encoder-hidden", "16",
                            "--folds", "4", "--fold", "1,3", "--no-progress", "--cache-dir", str(tmp_path / "cache"),
                            "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["split"] == split and results["protocol"]["folds"] == [1, 3]
    assert results["table"]["rows"][0]["folds_done"] == 2
    tested = []
    for fold in (1, 3):
        metrics = json.loads((out / f"fold-{fold}" / "ap" / "metrics.json").read_text())
        assert metrics["protocol"]["protocol"].startswith(f"{split}(fold={fold}/4")
        tested.append(metrics["protocol"]["test"])
    assert sum(tested) < 40 and all(tested)
