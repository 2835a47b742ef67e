"""benchmarks/espeak_corpus.py: the ablation's held-out speech corpus, read as a manifest."""

from __future__ import annotations

import shutil

import pytest
import soundfile

from benchmarks.espeak_corpus import CLASSES, make_corpus
from lpmn_fast.data.manifest import load_manifest
from lpmn_fast.protocol import make_split

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None,
                                reason="espeak-ng is not installed (apt-get install espeak-ng); the corpus needs it")


def test_espeak_corpus_is_a_balanced_iemocap_shaped_manifest(tmp_path):
    manifest = make_corpus(tmp_path, utterances_per_speaker=4, seed=0)
    corpus = load_manifest(manifest, strict=True)
    assert len(corpus.utterances) == 5 * 2 * 4
    assert sorted({u.label for u in corpus.utterances}) == sorted(CLASSES)
    assert {u.session for u in corpus.utterances} == {1, 2, 3, 4, 5}
    info = soundfile.info(str(tmp_path / "Ses01F_000.wav"))
    assert (info.samplerate, info.channels) == (16000, 1) and info.duration > 2.0
    split = make_split("loso-speaker", corpus.utterances, 5)
    assert {u.speaker for u in split.valid} == {"Ses05M"} and {u.speaker for u in split.test} == {"Ses05F"}
    # the same seed, the same utterances, labels and speakers
    again = make_corpus(tmp_path / "again", utterances_per_speaker=4, seed=0)
    assert again.read_text() == manifest.read_text()
