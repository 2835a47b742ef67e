"""Fixtures shared by the training tests: a tiny WAV corpus that train() reads instead of the synthetic one."""

from __future__ import annotations

import pytest
from training_fixtures import write_tiny_corpus

import lpmn_fast.training.corpus as training_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_tiny_corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def use_corpus(corpus, monkeypatch):
    """train() reads this tiny corpus instead of generating the synthetic one."""
    monkeypatch.setattr(training_corpus, "load_corpus", lambda config: corpus)
    return corpus
