"""Helpers of the model and training tests: a tiny random HuBERT on disk and a tiny WAV corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile
import torch

from lpmn_fast.data.corpus import IEMOCAP_CLASSES, Utterance
from lpmn_fast.training.corpus import Corpus


def tiny_hubert_config(stable_layer_norm: bool = False):
    """A 4-block HuBERT with hidden size 32 and a 2-layer CNN of total stride 320 (20 ms frames)."""
    from transformers import HubertConfig

    return HubertConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
        conv_dim=(16, 16), conv_stride=(5, 64), conv_kernel=(10, 64), num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=2, do_stable_layer_norm=stable_layer_norm,
        feat_extract_norm="layer" if stable_layer_norm else "group",
    )


def save_tiny_hubert(directory: Path, stable_layer_norm: bool = False, seed: int = 0) -> Path:
    from transformers import HubertModel

    torch.manual_seed(seed)
    HubertModel(tiny_hubert_config(stable_layer_norm)).save_pretrained(directory)
    return directory


def write_tiny_corpus(root: Path, sessions: int = 3, per_speaker: int = 4, seed: int = 0) -> Corpus:
    """sessions x 2 speakers x per_speaker short WAVs (0.4-0.8 s, 16 kHz), labels cycling through
    the four classes; each class a different tone so there is something to learn."""
    rng = np.random.default_rng(seed)
    utterances = []
    for s in range(1, sessions + 1):
        for gender in "FM":
            speaker = f"Ses{s:02d}{gender}"
            for i in range(per_speaker):
                label = IEMOCAP_CLASSES[i % len(IEMOCAP_CLASSES)]
                t = np.arange(int(16000 * rng.uniform(0.4, 0.8))) / 16000
                wave = 0.3 * np.sin(2 * np.pi * 200 * (1 + IEMOCAP_CLASSES.index(label)) * t)
                wave += 0.02 * rng.standard_normal(t.size)
                path = root / f"{speaker}_{i:03d}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, wave.astype(np.float32), 16000)
                utterances.append(Utterance(f"{speaker}_{i:03d}", path, label, s, speaker))
    return Corpus(root, tuple(utterances), IEMOCAP_CLASSES)
