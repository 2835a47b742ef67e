"""Prediction at scale: batched results equal one-at-a-time ones, the pipeline-shaped API, input
expansion (folders, manifests, wav.scp), and lpmn-predict writing a whole folder to CSV/JSONL with
failures reported and --resume."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile
import torch
from training_fixtures import save_tiny_hubert, write_tiny_corpus

import lpmn_fast
from lpmn_fast.inference import InputError, Prediction, Predictor
from lpmn_fast.inference import predictor as predictor_module
from lpmn_fast.inference import readahead
from lpmn_fast.inference.audio import PendingAudio, header_samples, pending_audio
from lpmn_fast.inference.batch import evidence_span, length_batches, run_batch
from lpmn_fast.inference.chunks import run_chunked
from lpmn_fast.inference.inputs import expand_inputs
from lpmn_fast.predict import main as predict_main
from lpmn_fast.training import make_config, resolve
from lpmn_fast.training.build import build_model

TINY = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2, progress=False, kernel="torch")
CLASSES = ["neutral", "happy", "angry", "sad"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


def _model(tmp_path, head="lpmn", seed=0, **fields):
    # These tests compare batched with one-at-a-time float32 results to 1e-5: the default
    # --feature-norm standard divides the pooled values by their spread over K and scales those
    # rounding differences by about 1/spread, so they use the plain form unless a test asks
    # (test_the_default_feature_norm_batches_as_one_at_a_time covers the default).
    fields.setdefault("feature_norm", "none")
    torch.manual_seed(seed)
    if fields.get("valence_weight"):  # a corpus with valence, as far as the config is concerned
        fields.update(data="mer2023", data_dir=str(tmp_path))
    return build_model(resolve(make_config(**{**TINY, **fields}, head=head, run_dir=str(tmp_path))), 4).eval()


def _waves(n=11, seed=0) -> list[torch.Tensor]:
    """Ragged lengths: 0.03 s (2 frames) to about 3 s, odd sample counts."""
    g = torch.Generator().manual_seed(seed)
    lengths = [481, 16001, 4003, 48017, 640, 7777, 30011, 1201, 12345, 999, 25013][:n]
    return [0.1 * torch.randn(n_, generator=g) + 0.2 * torch.sin(torch.arange(n_) * (0.01 + 0.003 * i))
            for i, n_ in enumerate(lengths)]


@pytest.mark.parametrize("head", ["lpmn", "ap", "mp"])
@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_batched_equals_one_at_a_time(tmp_path, head, batch_size):
    # float32 throughout: padded batches change BLAS blocking and the batched fbank rounds differently
    # from kaldi.fbank (tests/test_fbank.py), so agreement is to rounding, not bits (seen: 2.3e-6).
    predictor = Predictor(_model(tmp_path, head, valence_weight=0.0), CLASSES, chunk_seconds=2.0)  # 48017 is chunked
    waves = _waves()
    batched = predictor.predict_batch(waves, batch_size=batch_size)
    for wave, b in zip(waves, batched):
        one = predictor.predict(wave, 16000, explain=False)
        assert b.label == one.label and b.num_frames == one.num_frames and b.duration_s == one.duration_s
        for c in CLASSES:
            assert b.probabilities[c] == pytest.approx(one.probabilities[c], abs=1e-5)
        assert b.evidence_span == one.evidence_span
        assert (b.evidence_span is None) == (head != "lpmn")


@pytest.mark.parametrize("feature_norm", ["standard", "log"])
def test_the_default_feature_norm_batches_as_one_at_a_time(tmp_path, feature_norm):
    predictor = Predictor(_model(tmp_path, feature_norm=feature_norm), CLASSES)
    waves = _waves(6)
    for wave, b in zip(waves, predictor.predict_batch(waves, batch_size=4)):
        one = predictor.predict(wave, 16000, explain=False)
        assert b.label == one.label
        for c in CLASSES:
            assert b.probabilities[c] == pytest.approx(one.probabilities[c], abs=2e-4)


def test_padding_changes_nothing_in_the_pooled_results(tmp_path):
    model = _model(tmp_path)
    waves = _waves()
    together = run_batch(model, waves, [model.backbone.prepare(w) for w in waves])  # the features run_chunked uses
    for wave, r in zip(waves, together):
        alone = run_chunked(model, wave, 10**6)
        assert r.num_frames == alone.num_frames
        torch.testing.assert_close(r.pooled, alone.pooled, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.logits, alone.logits, rtol=1e-5, atol=1e-6)
        assert torch.equal(r.frame_index, alone.frame_index)


def test_a_valence_model_batches_its_valence(tmp_path):
    predictor = Predictor(_model(tmp_path, valence_weight=1.0), CLASSES)
    waves = _waves(6)
    for wave, b in zip(waves, predictor.predict_batch(waves, batch_size=4)):
        assert b.valence == pytest.approx(predictor.predict(wave, 16000, explain=False).valence, abs=1e-5)


def test_hubert_batches_equal_one_at_a_time(tmp_path):
    hubert = save_tiny_hubert(tmp_path / "hubert")
    model = _model(tmp_path, backbone="hubert", hubert_path=str(hubert), hubert_layers=2, hubert_finetune_layers=[2])
    predictor = Predictor(model, CLASSES)
    waves = _waves(7)
    for wave, b in zip(waves, predictor.predict_batch(waves, batch_size=4)):
        one = predictor.predict(wave, 16000, explain=False)
        # the attention mask hides padding; float32 attention over a longer padded row rounds differently
        for c in CLASSES:
            assert b.probabilities[c] == pytest.approx(one.probabilities[c], abs=1e-5)


def test_evidence_span_is_the_window_with_the_most_evidence(tmp_path):
    model = _model(tmp_path)
    predictor = Predictor(model, CLASSES, evidence_seconds=0.2)
    wave = _waves()[3]  # 3 s
    p = predictor.predict(wave, 16000)
    label = CLASSES.index(p.label)
    evidence = p.explanation.evidence[:, label].clamp_min(0)  # per-frame evidence (exact split of the logit)
    width = 10  # 0.2 s of 20 ms frames
    sums = torch.stack([evidence[a:a + width].sum() for a in range(p.num_frames - width + 1)])
    start, end = p.evidence_span
    a = round(start / 0.02)
    assert sums[a] >= sums.max() * (1 - 1e-4)
    assert end == pytest.approx(min((a + width - 1) * 0.02 + 0.025, wave.numel() / 16000), abs=1e-4)
    result = run_chunked(model, wave, 10**6)
    # a window longer than the input: all of its frames
    assert evidence_span(model.head, result, label, predictor.geometry, wave.numel(), 100.0) == (
        0.0, round(((p.num_frames - 1) * 320 + 400) / 16000, 4))


def test_files_decoded_in_the_background_equal_files_read_first(tmp_path, corpus):
    predictor = Predictor(_model(tmp_path), CLASSES)
    paths = [str(u.path) for u in corpus.utterances[:5]]
    (tmp_path / "bad.wav").write_bytes(b"RIFF, but not really")
    sources = [pending_audio(p) for p in paths] + [pending_audio(tmp_path / "missing.wav"),
                                                   pending_audio(tmp_path / "bad.wav")]
    assert [s.samples for s in sources] == [soundfile.info(p).frames for p in paths] + [0, 0]  # 16 kHz files
    out = dict(predictor.predict_stream(sources, batch_size=2))
    assert sorted(out) == list(range(7))
    for n, path in enumerate(paths):
        one = predictor.predict_file(path, explain=False)
        assert out[n].label == one.label and out[n].num_frames == one.num_frames
        assert out[n].probabilities == pytest.approx(one.probabilities, abs=1e-5)
    assert isinstance(out[5], InputError) and "missing.wav" in str(out[5])
    assert isinstance(out[6], InputError) and "bad.wav" in str(out[6])


def test_header_lengths_follow_spans_and_rates(tmp_path):
    path = tmp_path / "8k.wav"
    soundfile.write(path, 0.1 * np.ones(8000), 8000, subtype="PCM_16")  # 1 s at 8 kHz
    assert header_samples(path) == 16000
    assert header_samples(path, 0.25, 0.5) == 4000
    assert header_samples(path, 0.75) == 4000 and header_samples(path, 2.0) == 0


def test_a_file_longer_than_its_header_says_runs_chunked(tmp_path):
    predictor = Predictor(_model(tmp_path), CLASSES, chunk_seconds=2.0)
    long = _waves()[3]  # 3 s: more than one chunk
    [(position, got)] = list(predictor.predict_stream([PendingAudio(1000, lambda: long)]))
    one = predictor.predict(long, 16000, explain=False)
    assert position == 0 and got.num_frames == one.num_frames and got.probabilities == one.probabilities


def test_a_bad_path_among_good_ones_is_named_by_its_position(tmp_path, corpus, monkeypatch):
    predictor = Predictor(_model(tmp_path), CLASSES)
    good = str(corpus.utterances[0].path)
    with pytest.raises(InputError, match=r"item 2: .*nothere\.wav"):
        predictor.predict_batch([good, good, str(tmp_path / "nothere.wav"), good], batch_size=2)
    # fail fast: a missing file stops the model before it runs, wherever the file is in the list
    silent = str(tmp_path / "silent.wav")
    soundfile.write(silent, np.zeros(16000), 16000)
    runs = []
    monkeypatch.setattr(predictor_module, "run_batch", lambda *a: runs.append(1) or run_batch(*a))
    with pytest.raises(InputError, match=r"item 30: .*nothere\.wav"):
        predictor.predict_batch([good] * 30 + [str(tmp_path / "nothere.wav")] + [good] * 30, batch_size=4)
    assert runs == []
    # a file that fails only when decoded: the model stops at its batch, and the first such item is named
    with pytest.raises(InputError, match=r"item 7: .*all-silent"):
        predictor.predict_batch([good] * 7 + [silent] + [good] * 5 + [silent], batch_size=4)


@pytest.mark.parametrize("cores", [1, 64])
def test_features_in_line_or_in_the_background_give_the_same_predictions(tmp_path, corpus, monkeypatch, cores):
    # A CPU model on as many torch threads as cores prepares each batch in line; with a core to spare
    # a background thread decodes and featurises ahead. Both must give the same predictions.
    predictor = Predictor(_model(tmp_path), CLASSES)
    paths = [str(u.path) for u in corpus.utterances[:9]]
    pools = []
    real_pool = readahead.ThreadPoolExecutor
    monkeypatch.setattr(readahead, "ThreadPoolExecutor", lambda **kw: pools.append(kw) or real_pool(**kw))
    monkeypatch.setattr(predictor_module, "available_cpus", lambda: cores)
    got = predictor.predict_batch(paths, batch_size=4)
    assert len(pools) == (0 if torch.get_num_threads() >= cores else 1)
    for path, p in zip(paths, got):
        one = predictor.predict_file(path, explain=False)
        assert p.label == one.label and p.probabilities == pytest.approx(one.probabilities, abs=1e-5)


@pytest.mark.parametrize("cores", [1, 64])  # prepared in line, or a batch ahead across window boundaries
def test_a_stream_of_many_windows_keeps_input_order(tmp_path, corpus, monkeypatch, cores):
    monkeypatch.setattr(predictor_module, "available_cpus", lambda: cores)
    predictor = Predictor(_model(tmp_path), CLASSES, chunk_seconds=2.0)
    files = [str(u.path) for u in corpus.utterances[:4]]
    waves = _waves()
    inputs = [InputError("unreadable a"), InputError("unreadable b"), InputError("unreadable c"),  # a window of errors
              pending_audio(files[0]), waves[3], waves[0],  # a chunked 3 s wave, a 2-frame one
              torch.zeros(16000), pending_audio(files[1]), pending_audio(tmp_path / "missing.wav"),
              waves[1], pending_audio(files[2]), waves[2], pending_audio(files[3])]
    got = list(predictor.predict_stream(inputs, batch_size=2, lookahead=3))
    assert [position for position, _ in got] == list(range(len(inputs)))
    for (position, outcome), item in zip(got, inputs):
        if isinstance(item, InputError):
            assert outcome is item
        elif position in (6, 8):
            assert isinstance(outcome, InputError) and ("all-silent" in str(outcome) or "missing.wav" in str(outcome))
        else:
            one = predictor.predict(item.load() if isinstance(item, PendingAudio) else item, 16000, explain=False)
            assert outcome.label == one.label and outcome.num_frames == one.num_frames
            assert outcome.probabilities == pytest.approx(one.probabilities, abs=1e-5)
    # fail fast: the stream ends with the window holding the first unusable input
    got = dict(predictor.predict_stream(inputs[3:], batch_size=2, lookahead=3, fail_fast=True))
    assert [isinstance(got[p], Prediction) for p in range(3)] == [True] * 3
    assert isinstance(got[3], InputError) and max(got) < 6  # the silent wave: nothing after its window


@pytest.mark.parametrize("cores", [1, 64])
def test_a_failing_source_still_gets_the_outcomes_before_it(tmp_path, corpus, monkeypatch, cores):
    monkeypatch.setattr(predictor_module, "available_cpus", lambda: cores)
    predictor = Predictor(_model(tmp_path), CLASSES)
    files = [str(u.path) for u in corpus.utterances[:7]]

    def source():
        yield from map(pending_audio, files)
        raise OSError("the network share went away")

    got = []
    with pytest.raises(OSError, match="network share"):
        for outcome in predictor.predict_stream(source(), batch_size=2, lookahead=3):
            got.append(outcome)
    assert [p for p, _ in got] == list(range(7)) and all(isinstance(o, Prediction) for _, o in got)


def test_fail_fast_draws_no_input_past_the_failing_window(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr(predictor_module, "available_cpus", lambda: 64)  # working ahead
    predictor = Predictor(_model(tmp_path), CLASSES)
    good = pending_audio(corpus.utterances[0].path)
    drawn = []

    def source():
        for n in range(40):
            drawn.append(n)
            yield InputError("bad") if n == 4 else good

    got = dict(predictor.predict_stream(source(), batch_size=2, lookahead=6, fail_fast=True))
    assert isinstance(got[4], InputError) and max(got) < 6
    assert len(drawn) <= 12  # the failing window and at most the next, drawn while working ahead


def test_autocast_reaches_the_model_not_the_features(tmp_path, corpus, monkeypatch):
    # lpmn-predict --precision bf16 runs the stream under autocast, which the background thread that
    # prepares batches does not see: features are float32 in both places, so both give the same
    predictor = Predictor(_model(tmp_path), CLASSES)
    files = [str(u.path) for u in corpus.utterances[:6]]
    got = {}
    for cores in (1, 64):  # in line, in the background
        monkeypatch.setattr(predictor_module, "available_cpus", lambda cores=cores: cores)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got[cores] = predictor.predict_batch(files, batch_size=3)
    for a, b in zip(got[1], got[64]):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-6)


def test_length_batches_group_similar_lengths():
    assert length_batches([5, 1, 9, 3, 7], 2) == [[2, 4], [0, 3], [1]]
    with pytest.raises(ValueError, match="batch_size"):
        length_batches([1], 0)


def test_pipeline_shaped_output(tmp_path, corpus):
    predictor = Predictor(_model(tmp_path), CLASSES)
    wave = _waves()[1]
    top = predictor(wave, top_k=2)
    assert [set(d) for d in top] == [{"label", "score"}] * 2 and top[0]["score"] >= top[1]["score"]
    full = predictor(wave, top_k=None)
    assert sorted(d["label"] for d in full) == sorted(CLASSES) and sum(d["score"] for d in full) == pytest.approx(1)
    assert full[:2] == top
    path = str(corpus.utterances[0].path)
    as_path, as_dict, as_array = predictor([path, {"array": soundfile.read(path)[0], "sampling_rate": 16000},
                                            soundfile.read(path, dtype="float32")[0]])
    assert [d["label"] for d in as_path] == [d["label"] for d in as_dict] == [d["label"] for d in as_array]
    assert as_path[0]["score"] == pytest.approx(as_dict[0]["score"], abs=1e-6)
    with pytest.raises(InputError, match="item 1: .*all-silent"):
        predictor.predict_batch([wave, torch.zeros(16000)])
    with pytest.raises(InputError, match="item 0: .*'array'"):
        predictor.predict_batch([{"sampling_rate": 16000}])
    with pytest.raises(InputError, match="cannot predict a int"):
        predictor.predict_batch([3])


def test_inputs_expand_folders_manifests_and_wav_scp(tmp_path, corpus):
    folder = tmp_path / "in"
    (folder / "sub" / ".hidden").mkdir(parents=True)
    for i, u in enumerate(corpus.utterances[:3]):
        (folder / ("sub" if i else "") / u.path.name).symlink_to(u.path)
    (folder / "readme.txt").write_text("ignored")
    (folder / "sub" / ".hidden" / "x.wav").symlink_to(corpus.utterances[3].path)
    manifest = tmp_path / "list.tsv"
    manifest.write_text(f"path\tlabel\tstart\tend\n{corpus.utterances[4].path}\tangry\t0.1\t0.3\n"
                        f"in/{corpus.utterances[0].path.name}\t\t\t\n\tsad\t\t\n")
    scp = tmp_path / "wav.scp"
    scp.write_text(f"utt1 {corpus.utterances[5].path}\nutt2 sox a.wav -t wav - |\nbroken\n")
    (tmp_path / "empty").mkdir()
    assert "no audio files under the folder" in expand_inputs([tmp_path / "empty"])[0].error
    items = expand_inputs([folder, manifest, scp, tmp_path / "missing.wav"])
    assert [i.file for i in items[:3]] == [str(folder / corpus.utterances[0].path.name)] + sorted(
        str(folder / "sub" / u.path.name) for u in corpus.utterances[1:3])
    assert (items[3].start, items[3].end) == (0.1, 0.3)
    assert items[4].file == str(folder / corpus.utterances[0].path.name)
    assert items[5].error == f"empty path at {manifest}:4"
    assert (items[6].id, items[6].file, items[6].error) == ("utt1", str(corpus.utterances[5].path), None)
    assert "piped command" in items[7].error and f"{scp}:2" in items[7].error
    assert f"{scp}:3" in items[8].error and items[9].file == str(tmp_path / "missing.wav")


@pytest.fixture(scope="module")
def big_folder(tmp_path_factory):
    """103 audio files in nested folders (one 3 s file among 0.3-1 s ones) and one corrupt file."""
    root = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(0)
    for i in range(103):
        seconds = 3.0 if i == 50 else rng.uniform(0.3, 1.0)
        t = np.arange(int(16000 * seconds)) / 16000
        wave = 0.3 * np.sin(2 * np.pi * (150 + 5 * i) * t) + 0.02 * rng.standard_normal(t.size)
        path = root / f"speaker{i % 4}" / f"clip{i:03d}.{'flac' if i % 3 else 'wav'}"
        path.parent.mkdir(exist_ok=True)
        soundfile.write(path, wave.astype(np.float32), 16000 if i % 5 else 22050)
    (root / "speaker1" / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    return root


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    folder = tmp_path_factory.mktemp("model")
    _model(folder, valence_weight=1.0).save_pretrained(folder / "lpmn", CLASSES)
    return folder / "lpmn"


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cli_labels_a_folder_of_100_files_to_csv(tmp_path, big_folder, saved_model, capsys):
    out = tmp_path / "labels.csv"
    code = predict_main([str(saved_model), str(big_folder), "--output", str(out), "--batch-size", "8",
                         "--no-progress"])
    assert code == 1  # the corrupt file
    captured = capsys.readouterr()
    rows = _csv(out)
    assert len(rows) == 104 and len({r["file"] for r in rows}) == 104
    assert list(rows[0]) == ["file", "label", *(f"prob_{c}" for c in CLASSES), "valence", "evidence_start_s",
                             "evidence_end_s", "duration_s", "num_frames", "error"]
    failed = [r for r in rows if r["error"]]
    assert [r["file"] for r in failed] == [str(big_folder / "speaker1" / "corrupt.wav")]
    assert "cannot decode" in failed[0]["error"] and failed[0]["label"] == ""
    predictor = lpmn_fast.load(saved_model)
    for r in rows:
        if r["error"]:
            continue
        assert r["label"] in CLASSES and sum(float(r[f"prob_{c}"]) for c in CLASSES) == pytest.approx(1, abs=1e-5)
        assert 0 <= float(r["evidence_start_s"]) < float(r["evidence_end_s"]) <= float(r["duration_s"]) + 1e-4
    some = [r for r in rows if not r["error"]][::25]
    for r in some:  # the CSV holds what predict_file gives one at a time
        one = predictor.predict_file(r["file"], explain=False)
        assert r["label"] == one.label and float(r["valence"]) == pytest.approx(one.valence, abs=1e-5)
    assert "104 inputs in" in captured.err and "utterances/s" in captured.err and "real-time factor" in captured.err
    assert "1 of 104 files failed" in captured.err


def test_cli_resume_skips_what_is_done_and_retries_failures(tmp_path, big_folder, saved_model, capsys, monkeypatch):
    out = tmp_path / "labels.jsonl"
    first = sorted(big_folder.glob("speaker0/*"))
    assert predict_main([str(saved_model), *map(str, first), str(big_folder / "speaker1" / "corrupt.wav"),
                         "--output", str(out), "--no-progress"]) == 1
    before = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(before) == len(first) + 1
    assert predict_main([str(saved_model), str(big_folder), "--output", str(out)]) == 2  # would overwrite
    assert "--resume" in capsys.readouterr().err
    seen = []
    original = Predictor.predict_stream

    def spy(self, waves, **kwargs):
        waves = list(waves)
        seen.append(len(waves))
        return original(self, waves, **kwargs)

    monkeypatch.setattr(Predictor, "predict_stream", spy)
    assert predict_main([str(saved_model), str(big_folder), "--output", str(out), "--resume", "--no-progress"]) == 1
    assert seen == [104 - len(first)]  # the corrupt file again, and every file not yet labelled
    assert "already labelled" in capsys.readouterr().err
    after = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(after) == 104 and after[:len(first)] == before[:len(first)]  # earlier rows kept as written
    assert predict_main([str(saved_model), str(big_folder), "--output", str(out), "--overwrite",
                         "--no-progress", "--batch-size", "32"]) == 1
    assert len(out.read_text().splitlines()) == 104


def test_cli_output_problems_are_named(tmp_path, saved_model, corpus, capsys):
    wav = str(corpus.utterances[0].path)
    assert predict_main([str(saved_model), wav, "--output", str(tmp_path / "x.txt")]) == 2
    assert "name it .csv or .jsonl" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    other.write_text("file,label,prob_a,prob_b,error\nx.wav,a,0.5,0.5,\n")
    assert predict_main([str(saved_model), wav, "--output", str(other), "--resume"]) == 2
    assert "holds probabilities of classes ['a', 'b']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict_main([str(saved_model), wav, "--resume"])
    assert "need --output" in capsys.readouterr().err


def test_cli_manifest_spans_and_wav_scp_ids(tmp_path, saved_model, corpus, capsys):
    scp = tmp_path / "wav.scp"
    scp.write_text(f"first {corpus.utterances[0].path}\n")
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,start,end\n{corpus.utterances[1].path},0.1,0.3\n")
    out = tmp_path / "o.csv"
    assert predict_main([str(saved_model), str(scp), str(manifest), "--output", str(out), "--no-progress"]) == 0
    rows = _csv(out)
    assert [r["id"] for r in rows] == ["first", ""] and [r["start"] for r in rows] == ["", "0.1"]
    assert float(rows[1]["duration_s"]) == pytest.approx(0.2)
