"""Helpers of the model and training tests: a tiny random HuBERT on disk and a tiny WAV corpus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lpmn_fast.data.corpus import IEMOCAP_CLASSES, Utterance
from lpmn_fast.training import make_config
from lpmn_fast.training.corpus import Corpus

# A model small enough for CI's two cores: 16-channel encoder, 8 prototypes.
TINY = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2, lr=1e-2, batch_size=4,
            epochs=2, probe_epochs=3, kmeans_frames=500, checkpoint_every=3, progress=False, test_session=3)


def tiny_config(tmp_path: Path, **fields):
    """A TrainConfig of the TINY model with its cache and run folders under ``tmp_path``."""
    return make_config(**{**TINY, "cache_dir": str(tmp_path / "cache"), "run_dir": str(tmp_path / "run"), **fields})


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


# transformers config class of each supported encoder family, and whether it has a stable-layer-norm variant.
ENCODER_CONFIGS = {"hubert": ("HubertConfig", True), "wav2vec2": ("Wav2Vec2Config", True),
                   "wavlm": ("WavLMConfig", True), "data2vec-audio": ("Data2VecAudioConfig", False)}
# Every (family, stable layer norm) pair a test should cover.
ENCODER_VARIANTS = [(family, stable) for family, (_, has_stable) in ENCODER_CONFIGS.items()
                    for stable in ((False, True) if has_stable else (False,))]


def save_tiny_encoder(directory: Path, family: str = "hubert", stable_layer_norm: bool = False, seed: int = 0,
                      **overrides) -> Path:
    """A random 4-block encoder of ``family`` (hidden 32, 20 ms frames) saved with save_pretrained."""
    import transformers

    config_class = getattr(transformers, ENCODER_CONFIGS[family][0])
    fields = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                  conv_dim=(16, 16), conv_stride=(5, 64), conv_kernel=(10, 64), num_conv_pos_embeddings=16,
                  num_conv_pos_embedding_groups=2, feat_extract_norm="layer" if stable_layer_norm else "group")
    if family == "data2vec-audio":  # no stable-layer-norm variant; a stack of small positional convs
        fields.update(num_conv_pos_embeddings=2, conv_pos_kernel_size=5)
    else:
        fields["do_stable_layer_norm"] = stable_layer_norm
    if family == "wavlm":  # few buckets, so a short utterance still spans several
        fields.update(num_buckets=16, max_bucket_distance=32)
    fields.update(overrides)
    torch.manual_seed(seed)
    transformers.AutoModel.from_config(config_class(**fields)).save_pretrained(directory)
    return directory


def write_tiny_corpus(root: Path, sessions: int = 3, per_speaker: int = 4, seed: int = 0) -> Corpus:
    """sessions x 2 speakers x per_speaker short WAVs (0.4-0.8 s, 16 kHz), labels cycling through
    the four classes; each class a different tone so there is something to learn."""
    import soundfile  # here, not at import: the op tests collect without it

    rng = np.random.default_rng(seed)
    utterances = []
    for s in range(1, sessions + 1):
        for gender in "FM":
            speaker = f"Ses{s:02d}{gender}"
            for i in range(per_speaker):
                label = IEMOCAP_CLASSES[i % len(IEMOCAP_CLASSES)]
                path = root / f"{speaker}_{i:03d}.wav"
                path.parent.mkdir(parents=True, exist_ok=True)
                soundfile.write(path, _tone(rng, IEMOCAP_CLASSES.index(label), rng.uniform(0.4, 0.8)), 16000)
                utterances.append(Utterance(f"{speaker}_{i:03d}", path, label, s, speaker))
    return Corpus(root, tuple(utterances), IEMOCAP_CLASSES)


def _tone(rng, label_index: int, seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    wave = 0.3 * np.sin(2 * np.pi * 200 * (1 + label_index) * t) + 0.02 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def write_fake_iemocap(root: Path, sessions: int = 3, per_speaker: int = 4, seed: int = 0) -> Path:
    """An IEMOCAP_full_release-style tree: SessionN/dialog/EmoEvaluation/<dialog>.txt label lines
    (with the evaluator lines around them and an xxx and a fru utterance that the 4-class set drops)
    and SessionN/sentences/wav/<dialog>/<utt>.wav tones (one pitch per class). Per speaker,
    ``per_speaker`` kept utterances whose labels cycle through neu, hap, ang, sad, exc."""
    import soundfile  # here, not at import: the op tests collect without it

    rng = np.random.default_rng(seed)
    codes = ("neu", "hap", "ang", "sad", "exc")
    index = {"neu": 0, "hap": 1, "exc": 1, "ang": 2, "sad": 3}
    for s in range(1, sessions + 1):
        dialog = f"Ses{s:02d}F_impro01"
        label_dir = root / f"Session{s}" / "dialog" / "EmoEvaluation"
        wav_dir = root / f"Session{s}" / "sentences" / "wav" / dialog
        label_dir.mkdir(parents=True, exist_ok=True)
        wav_dir.mkdir(parents=True, exist_ok=True)
        lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
        entries = [(f"{g}{i:03d}", codes[i % len(codes)]) for g in "FM" for i in range(per_speaker)]
        entries += [("F900", "xxx"), ("M900", "fru")]
        for n, (suffix, code) in enumerate(entries):
            utt = f"{dialog}_{suffix}"
            lines += [f"[{2.0 * n:.4f} - {2.0 * n + 1.5:.4f}]\t{utt}\t{code}\t[2.5000, 3.0000, 3.0000]",
                      "C-E1:\tNeutral;\t()", "A-E1:\tval 3; act 3; dom  3;\t()", ""]
            label = index.get(code, 0)
            soundfile.write(wav_dir / f"{utt}.wav", _tone(rng, label, rng.uniform(0.4, 0.8)), 16000, subtype="PCM_16")
        (label_dir / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    return root


def write_fake_mer2023(root: Path, per_class: int = 6, seed: int = 0) -> tuple[Path, Path]:
    """A MER2023-style release: train-label.csv (name, discrete in the release's spellings, valence)
    and wav/<name>.wav tones, one pitch per class; valence depends on the class plus noise.
    Returns (label CSV, WAV folder)."""
    import soundfile  # here, not at import: the op tests collect without it

    rng = np.random.default_rng(seed)
    spellings = ("neutral", "angry", "happy", "sad", "worried", "surprise")  # the six MER2023 classes
    class_valence = (0.0, -2.5, 2.5, -2.0, -1.0, 1.0)
    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    rows = ["name,discrete,valence"]
    for i in range(per_class * len(spellings)):
        c = i % len(spellings)
        name = f"sample_{i:08d}"
        soundfile.write(wav_dir / f"{name}.wav", _tone(rng, c, rng.uniform(0.4, 0.8)), 16000, subtype="PCM_16")
        rows.append(f"{name},{spellings[c]},{class_valence[c] + rng.normal(0, 0.3):.3f}")
    label_csv = root / "train-label.csv"
    label_csv.write_text("\n".join(rows) + "\n")
    return label_csv, wav_dir
