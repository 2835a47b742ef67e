"""Corpora: the synthetic localized-emotion corpus, IEMOCAP and MER2023, and WAV reading."""
