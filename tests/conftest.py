"""Fixtures shared by the training tests: a tiny WAV corpus that train() reads instead of the synthetic one."""

from __future__ import annotations

import pytest

# training_fixtures (soundfile) and lpmn_fast.training are imported by the fixtures that use them: the
# op and kernel tests collect where neither audio library is installed (the GPU image has no soundfile).


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from training_fixtures import write_tiny_corpus

    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def use_corpus(corpus, monkeypatch):
    """train() reads this tiny corpus instead of generating the synthetic one."""
    import lpmn_fast.training.corpus as training_corpus

    monkeypatch.setattr(training_corpus, "load_corpus", lambda config: corpus)
    return corpus
