"""``load(path) -> Predictor``; ``Predictor.predict(waveform, sample_rate) -> Prediction``.

    import lpmn_fast
    predictor = lpmn_fast.load("runs/demo")          # a run directory or a save_pretrained one
    p = predictor.predict(waveform, 44100)            # (samples,) or (channels, samples)
    p.label, p.probabilities, p.explanation.evidence  # explanation: LPMN models only
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models import LPMNHead, ProbeHead, SERModel
from ..models.pretrained import CONFIG_NAME, from_pretrained, is_local_path
from .audio import SAMPLE_RATE, InputError, check_waveform, load_audio, to_mono_16k
from .chunks import frame_geometry, run_chunked
from .explanation import Explanation, explain

# In a training run directory, the models lpmn-train exports, in order of preference: the probed
# LPMN (top-K' prototypes, the paper's final system), then the trained model itself.
RUN_MODELS = ("model-probe", "model")
# Prototypes an explanation lists and marks. Few, because the fewer the most important ones, the more
# surely their winning frames mark the emotion: on the synthetic corpus the winning frame of the top
# 1 / 5 / 10 / 60 prototypes lay in the emotional segment 63 / 56 / 51 / 24 % of the time (chance 19 %).
DEFAULT_TOP_K = 10


@dataclass
class Prediction:
    """label; probabilities {class: p}; duration_s of the 16 kHz input; num_frames; valence (a
    float, for models with a valence regressor, else None); explanation (LPMN models, when asked)
    or None with the reason in explanation_unsupported."""

    label: str
    probabilities: dict[str, float]
    duration_s: float
    num_frames: int
    valence: float | None = None
    explanation: Explanation | None = None
    explanation_unsupported: str | None = None

    def to_dict(self) -> dict:
        out = {"label": self.label, "probabilities": self.probabilities, "duration_s": round(self.duration_s, 4),
               "num_frames": self.num_frames}
        if self.valence is not None:
            out["valence"] = self.valence
        if self.explanation_unsupported:
            out["explanation_unsupported"] = self.explanation_unsupported
        return out


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """``path`` itself if it holds config.json, else the first of RUN_MODELS inside it (a run directory)."""
    path = Path(path).expanduser()
    if (path / CONFIG_NAME).is_file():
        return path
    for name in RUN_MODELS:
        if (path / name / CONFIG_NAME).is_file():
            return path / name
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path} does not exist")
    raise FileNotFoundError(f"no model in {path}: expected {CONFIG_NAME} (a save_pretrained directory) or a "
                            f"training run directory with {' or '.join(n + '/' for n in RUN_MODELS)}")


class Predictor:
    """A loaded SERModel with the input handling and explanation around it.

    chunk_seconds: frames per chunk of a long input (see lpmn_fast.inference.chunks; exact for
    fbank models, an approximation for HuBERT files longer than a chunk); context_seconds: extra
    audio each side of a HuBERT chunk; top_k: the most important prototypes (by Fisher importance)
    an explanation lists and marks (default DEFAULT_TOP_K; at most the model's K).
    """

    def __init__(self, model: SERModel, classes: list[str] | None = None, *, chunk_seconds: float = 30.0,
                 context_seconds: float = 2.0, top_k: int | None = None, source: str = "model"):
        if not chunk_seconds > 0 or context_seconds < 0:
            raise ValueError(f"need chunk_seconds > 0 and context_seconds >= 0, got {chunk_seconds}, "
                             f"{context_seconds}")
        self.model = model.eval()
        self.classes = list(classes or getattr(model, "classes", None)
                            or [f"class_{i}" for i in range(model.head.classifier.out_features)])
        self.source = source
        self.geometry = frame_geometry(model.backbone)
        self.chunk_frames = max(1, round(chunk_seconds * SAMPLE_RATE / self.geometry.shift))
        self.context_seconds = context_seconds
        self.top_k = top_k or DEFAULT_TOP_K
        head = model.head
        self.explainable = isinstance(head, (LPMNHead, ProbeHead))
        kind = getattr(head, "mode", type(head).__name__)
        self.unsupported = None if self.explainable else (
            f"explanations need a prototype (LPMN) head; this model has a {kind!r} head, so only its prediction "
            "is given")

    @property
    def min_samples(self) -> int:
        return self.geometry.window

    @torch.no_grad()
    def predict(self, waveform, sample_rate: int, explain: bool = True) -> Prediction:
        """waveform: (samples,) or (channels, samples) at ``sample_rate`` Hz -> Prediction.

        Raises InputError for empty, non-finite, silent or shorter-than-one-frame input.
        """
        wave = check_waveform(to_mono_16k(waveform, sample_rate), self.min_samples)
        return self._predict(wave, explain)

    def predict_file(self, path: str | os.PathLike, explain: bool = True) -> Prediction:
        """Prediction for an audio file; InputError naming the file when it cannot be used."""
        wave = load_audio(path)
        try:
            check_waveform(wave, self.min_samples)
        except InputError as error:
            raise InputError(f"{path}: {error}") from error
        with torch.no_grad():
            return self._predict(wave, explain)

    def _predict(self, wave: torch.Tensor, want_explanation: bool) -> Prediction:
        result = run_chunked(self.model, wave, self.chunk_frames, self.context_seconds,
                             soft_evidence=want_explanation and self.explainable)
        probs = torch.softmax(result.logits.float(), -1).tolist()
        prediction = Prediction(
            label=self.classes[int(result.logits.argmax())],
            probabilities={c: p for c, p in zip(self.classes, probs)},
            duration_s=wave.numel() / SAMPLE_RATE, num_frames=result.num_frames,
            valence=None if result.valence is None else float(result.valence),
        )
        if want_explanation:
            if self.explainable:
                prediction.explanation = explain(self.model.head, result, self.classes, self.geometry, self.top_k)
            else:
                prediction.explanation_unsupported = self.unsupported
        return prediction


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu", hubert_path: str | None = None,
         kernel: str | None = None, revision: str | None = None, **options) -> Predictor:
    """A Predictor for the model in ``path``: a ``save_pretrained`` directory, a training run
    directory (its model-probe/, else model/), or a Hugging Face Hub id ("org/name", at
    ``revision``; from the local cache when offline). device: "cpu", "cuda", "auto"; hubert_path:
    the pretrained HuBERT of a hubert model if not at its recorded path; options: see Predictor."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not is_local_path(path):
        model = SERModel.from_pretrained(path, revision=revision, device=device, hubert_path=hubert_path, kernel=kernel)
        return Predictor(model, source=str(path), **options)
    directory = resolve_model_dir(path)
    model = from_pretrained(directory, device=device, hubert_path=hubert_path, kernel=kernel)
    return Predictor(model, source=str(directory), **options)
