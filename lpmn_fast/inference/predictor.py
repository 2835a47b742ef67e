"""``load(path) -> Predictor``; ``Predictor.predict(path or waveform, sample_rate) -> Prediction``.

    import lpmn_fast
    predictor = lpmn_fast.load("runs/demo")          # a run directory or a save_pretrained one
    p = predictor.predict("a.wav")                    # a path, or a waveform and its rate: predict(w, 44100)
    p.label, p.probabilities, p.explanation.evidence  # explanation: LPMN models only
    many = predictor.predict_batch(["a.wav", "b.flac"])   # batched by length; same results as predict
    predictor("a.wav", top_k=2)                       # [{"label": ..., "score": ...}, ...] like a transformers pipeline
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..models import LPMNHead, ProbeHead, SERModel
from ..models.encoders import is_local
from ..models.pretrained import CONFIG_NAME, from_pretrained
from .audio import (SAMPLE_RATE, InputError, PendingAudio, check_waveform, header_samples, load_audio,
                    to_mono_16k)
from .batch import EVIDENCE_SECONDS, PooledBatch, evidence_spans, length_batches, prepare_batch, run_batch
from .chunks import frame_geometry, run_chunked
from .explanation import Explanation, explain
from .readahead import read_ahead

# In a training run directory, the models lpmn-train exports, in order of preference: the probed
# LPMN (top-K' prototypes, the paper's final system), then the trained model itself.
RUN_MODELS = ("model-probe", "model")
# Prototypes an explanation lists and marks. Few, because the fewer the most important ones, the more
# surely their winning frames mark the emotion: on the synthetic corpus the winning frame of the top
# 1 / 5 / 10 / 60 prototypes lay in the emotional segment 63 / 56 / 51 / 24 % of the time (chance 19 %).
DEFAULT_TOP_K = 10
# Batches whose audio is decoded and frozen features computed ahead of the model, in a background thread.
PREPARED_AHEAD = 2


@dataclass
class Prediction:
    """label; probabilities {class: p}; duration_s of the 16 kHz input; num_frames; valence (a
    float, for models with a valence regressor, else None); explanation (LPMN models, when asked)
    or None with the reason in explanation_unsupported; evidence_span (start_s, end_s) of the
    strongest evidence for the label (LPMN models, see lpmn_fast.inference.batch.evidence_span)."""

    label: str
    probabilities: dict[str, float]
    duration_s: float
    num_frames: int
    valence: float | None = None
    explanation: Explanation | None = None
    explanation_unsupported: str | None = None
    evidence_span: tuple[float, float] | None = None

    def to_dict(self) -> dict:
        out = {"label": self.label, "probabilities": self.probabilities, "duration_s": round(self.duration_s, 4),
               "num_frames": self.num_frames}
        if self.valence is not None:
            out["valence"] = self.valence
        if self.evidence_span is not None:
            out["evidence_start_s"], out["evidence_end_s"] = self.evidence_span
        if self.explanation_unsupported:
            out["explanation_unsupported"] = self.explanation_unsupported
        return out

    def top(self, top_k: int | None = None) -> list[dict]:
        """The transformers audio-classification pipeline's shape: [{"label", "score"}, ...], best first."""
        ranked = sorted(self.probabilities.items(), key=lambda kv: -kv[1])
        return [{"label": c, "score": p} for c, p in ranked[:top_k]]


@dataclass
class _Window:
    """Up to ``lookahead`` consecutive inputs of a stream: outcomes so far (position -> Prediction
    or InputError), the inputs to batch (position, samples, tensor or PendingAudio), their
    batches (indices into entries), how many of those have not run yet, the waveforms longer than
    a chunk (position, tensor), and the exception that ended the inputs, if one did."""

    results: dict
    entries: list
    batches: list[list[int]]
    batches_left: int
    long: list
    source_error: Exception | None = None

    def failed(self) -> bool:
        return any(isinstance(r, InputError) for r in self.results.values())


def available_cpus() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


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
                 context_seconds: float = 2.0, top_k: int | None = None, source: str = "model",
                 evidence_seconds: float = EVIDENCE_SECONDS):
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
        if not evidence_seconds > 0:
            raise ValueError(f"evidence_seconds must be > 0, got {evidence_seconds}")
        self.evidence_seconds = evidence_seconds
        head = model.head
        self.explainable = isinstance(head, (LPMNHead, ProbeHead))
        kind = getattr(head, "mode", type(head).__name__)
        self.unsupported = None if self.explainable else (
            f"explanations need a prototype (LPMN) head; this model has a {kind!r} head, so only its prediction "
            "is given")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def min_samples(self) -> int:
        return self.geometry.window

    @torch.no_grad()
    def predict(self, waveform, sample_rate: int | None = None, explain: bool = True) -> Prediction:
        """The Prediction for one input: an audio file's path (``sample_rate`` not needed), a
        waveform at ``sample_rate`` Hz ((samples,), (channels, samples) or (samples, channels), as
        soundfile.read gives it; the smaller dimension is the channels, at most 8), or a
        {"array", "sampling_rate"} dict.

        Raises InputError for missing, empty, non-finite, silent or shorter-than-one-frame input.
        """
        if isinstance(waveform, (str, os.PathLike)):
            return self.predict_file(waveform, explain)
        if isinstance(waveform, dict):
            return self._predict(self._wave(waveform, SAMPLE_RATE), explain)
        if sample_rate is None:
            raise InputError("a waveform needs its sample_rate: predict(waveform, sample_rate); "
                             "soundfile.read(path) returns both")
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
        prediction = self._predictions(PooledBatch.of(result), [wave.numel()])[0]
        if want_explanation:
            if self.explainable:
                prediction.explanation = explain(self.model.head, result, self.classes, self.geometry, self.top_k)
            else:
                prediction.explanation_unsupported = self.unsupported
        return prediction

    def _predictions(self, batch: PooledBatch, num_samples: list[int]) -> list[Prediction]:
        """One Prediction per input of ``batch``; num_samples: each input's 16 kHz length."""
        labels = batch.logits.argmax(-1)
        probs = torch.softmax(batch.logits.float(), -1).tolist()
        spans = evidence_spans(self.model.head, batch, labels, self.geometry, num_samples, self.evidence_seconds) \
            if self.explainable else [None] * len(batch)
        valence = None if batch.valence is None else batch.valence.float().tolist()
        return [Prediction(label=self.classes[label], probabilities=dict(zip(self.classes, p)),
                           duration_s=n / SAMPLE_RATE, num_frames=frames,
                           valence=None if valence is None else valence[i], evidence_span=span)
                for i, (label, p, n, frames, span) in enumerate(zip(labels.tolist(), probs, num_samples,
                                                                     batch.num_frames.tolist(), spans))]

    # ---- many inputs -------------------------------------------------------------------------

    def _wave(self, item, sample_rate: int) -> torch.Tensor:
        """One input of predict_batch/__call__ as a checked 16 kHz mono waveform."""
        if isinstance(item, (str, os.PathLike)):
            wave = load_audio(item)
            try:
                return check_waveform(wave, self.min_samples)
            except InputError as error:
                raise InputError(f"{item}: {error}") from error
        if isinstance(item, dict):  # the transformers pipeline's {"array"/"raw": ..., "sampling_rate": ...}
            array = item.get("array", item.get("raw"))
            if array is None or "sampling_rate" not in item:
                raise InputError(f"a dict input needs 'array' (or 'raw') and 'sampling_rate'; got keys {sorted(item)}")
            return check_waveform(to_mono_16k(array, item["sampling_rate"]), self.min_samples)
        if isinstance(item, (torch.Tensor, np.ndarray)):
            return check_waveform(to_mono_16k(item, sample_rate), self.min_samples)
        raise InputError(f"cannot predict a {type(item).__name__}: give a path, a waveform (tensor or array) or a "
                         "dict with 'array' and 'sampling_rate'")

    @torch.no_grad()
    def predict_stream(self, waves: Iterable[torch.Tensor | PendingAudio | InputError], *, batch_size: int = 16,
                       lookahead: int | None = None, fail_fast: bool = False
                       ) -> Iterator[tuple[int, Prediction | InputError]]:
        """(position, Prediction or InputError) for each of ``waves``, in input order.

        waves: 16 kHz mono (samples,) tensors (a silent or too-short one yields its InputError),
        files not yet decoded (:class:`PendingAudio`, see :func:`pending_audio`), or the InputError
        of an input that could not be used (passed through). Windows of ``lookahead`` inputs
        (default 8 batches) run in batches of ``batch_size`` similar lengths (see
        lpmn_fast.inference.batch), and each window's outcomes are yielded when its last batch has
        run. While the model runs one batch, a background thread decodes the files of the next
        PREPARED_AHEAD batches and computes their frozen features, as a DataLoader worker would,
        when a core is free for it: with a GPU model, or a CPU model on fewer torch threads than
        the process has cores; else (a CPU model on all cores) each batch is prepared here, when
        its turn comes (in the background there, it made batched prediction 1.9x slower on a
        2-core CPU). Working ahead draws the next window's inputs from ``waves`` (headers only, for
        files) before this window's outcomes are yielded; should ``waves`` raise, the outcomes of
        the inputs before it are yielded first. Inputs longer than one chunk run one at a time,
        chunked, when their window ends. Equal to :meth:`predict` per input, up to float rounding.

        fail_fast: once an input of a window is unusable, the model runs no more batches; the
        window's files are still decoded, so that its first unusable input in input order is
        yielded, and the stream ends after that window (inputs not run are not yielded).
        """
        lookahead = lookahead or 8 * batch_size
        backbone = self.model.backbone
        spare_core = self.device.type != "cpu" or torch.get_num_threads() < available_cpus()
        stopped = False  # fail_fast has ended the stream: draw no more inputs

        def jobs():  # (window, batch), or (window, None) for a window without batches
            for window in self._windows(waves, lookahead, batch_size):
                if stopped:
                    return
                yield from ((window, batch) for batch in window.batches) if window.batches else [(window, None)]

        def prepare(job):
            window, batch = job
            if batch is None:
                return job, None
            ready, failed, long = self._decode(window, batch)
            return job, (ready, prepare_batch(backbone, [w for _, w in ready]) if ready else [], failed, long)

        for (window, batch), prepared in read_ahead(jobs(), prepare, PREPARED_AHEAD if spare_core else 0):
            if batch is not None:
                window.batches_left -= 1
                self._run_prepared(window, *prepared, fail_fast)
            stopped = fail_fast and window.failed()
            if window.batches_left == 0:
                if not stopped:
                    for position, wave in window.long:
                        window.results[position] = self._predict(wave, False)
                yield from sorted(window.results.items())
                if stopped:
                    return
                if window.source_error is not None:
                    raise window.source_error

    def _too_long(self, wave: torch.Tensor) -> bool:
        return self.model.backbone.frame_count(wave.numel()) > self.chunk_frames

    def _windows(self, waves, lookahead: int, batch_size: int) -> Iterator[_Window]:
        """``waves`` (see predict_stream) as windows of ``lookahead`` positions: errors and checks
        done, inputs longer than a chunk set aside, the rest grouped into batches. An exception
        from ``waves`` ends the windows with the inputs drawn before it, holding the exception."""
        items = enumerate(waves)
        while True:
            window, source_error = [], None
            try:
                window.extend(itertools.islice(items, lookahead))
            except Exception as error:  # noqa: BLE001 - raised again once the inputs before it are done
                source_error = error
            if not window and source_error is None:
                return
            results: dict[int, Prediction | InputError] = {}
            entries, long = [], []  # (position, samples, tensor or PendingAudio); (position, tensor)
            for position, wave in window:
                if isinstance(wave, InputError):
                    results[position] = wave
                elif isinstance(wave, PendingAudio):
                    entries.append((position, wave.samples, wave))
                else:
                    try:
                        check_waveform(wave, self.min_samples)
                    except InputError as error:
                        results[position] = error
                        continue
                    if self._too_long(wave):
                        long.append((position, wave))
                    else:
                        entries.append((position, wave.numel(), wave))
            # Files whose header could not be read (samples 0) go in the first batch: they will
            # fail, and fail_fast then stops the model before it runs.
            batches = length_batches([samples or sys.maxsize for _, samples, _ in entries], batch_size)
            yield _Window(results, entries, batches, len(batches), long, source_error)
            if source_error is not None:
                return

    def _decode(self, window: _Window, batch: list[int]):
        """Decode and check the batch's pending files: (ready [(position, wave)], {position:
        InputError}, too long [(position, wave)])."""
        ready, failed, long = [], {}, []
        for i in batch:
            position, _, wave = window.entries[i]
            if isinstance(wave, PendingAudio):
                try:
                    wave = check_waveform(wave.load(), self.min_samples)
                except InputError as error:
                    failed[position] = error
                    continue
                if self._too_long(wave):  # longer than its header said
                    long.append((position, wave))
                    continue
            ready.append((position, wave))
        return ready, failed, long

    def _run_prepared(self, window: _Window, ready, feats, failed, long, fail_fast: bool) -> None:
        """The model on one prepared batch of ``window``; outcomes into window.results."""
        window.results.update(failed)
        window.long += long  # longer than their headers said: chunked when the window ends, as the others
        if fail_fast and window.failed():
            return  # decode on: the first unusable input of the window may be in a later batch
        if ready:
            waves = [w for _, w in ready]
            predictions = self._predictions(run_batch(self.model, waves, feats), [w.numel() for w in waves])
            window.results.update((position, p) for (position, _), p in zip(ready, predictions))

    def predict_batch(self, items, sample_rate: int = SAMPLE_RATE, *, batch_size: int = 16,
                      explain: bool = False) -> list[Prediction]:
        """Predictions for many ``items``: paths, waveforms ((samples,), (channels, samples) or
        (samples, channels) at ``sample_rate``) or {"array", "sampling_rate"} dicts, run in padded batches of
        ``batch_size``; the same results as :meth:`predict` one at a time, up to float rounding.
        Raises InputError naming the first unusable item. explain=True runs one at a time (the
        explanation's per-frame curves come from the chunked path)."""
        items = list(items)

        def source(n, item):
            def numbered(read):
                try:
                    return read()
                except InputError as error:
                    raise InputError(f"item {n}: {error}") from error

            if isinstance(item, (str, os.PathLike)):  # decoded later, in the background
                return PendingAudio(header_samples(item), lambda: numbered(lambda: self._wave(item, sample_rate)))
            try:
                return numbered(lambda: self._wave(item, sample_rate))
            except InputError as error:
                return error

        sources = (source(n, item) for n, item in enumerate(items))
        if explain:
            return [self._predict(w.load() if isinstance(w, PendingAudio) else w, True)
                    for w in self._checked(sources)]
        predictions = []
        for _, outcome in self.predict_stream(sources, batch_size=batch_size, fail_fast=True):
            if isinstance(outcome, InputError):
                raise outcome
            predictions.append(outcome)
        return predictions

    @staticmethod
    def _checked(waves: Iterable[torch.Tensor | PendingAudio | InputError]) -> Iterator[torch.Tensor | PendingAudio]:
        for wave in waves:
            if isinstance(wave, InputError):
                raise wave
            yield wave

    def __call__(self, inputs, sample_rate: int = SAMPLE_RATE, *, top_k: int | None = 5, batch_size: int = 16):
        """The transformers audio-classification pipeline's interface: one input gives
        [{"label", "score"}, ...] (best first, ``top_k`` of them, None = all); a list gives one such
        list per input. Inputs as for :meth:`predict_batch`."""
        single = not isinstance(inputs, (list, tuple))
        predictions = self.predict_batch([inputs] if single else inputs, sample_rate, batch_size=batch_size)
        ranked = [p.top(top_k) for p in predictions]
        return ranked[0] if single else ranked


def load(path: str | os.PathLike, *, device: str | torch.device = "cpu", hubert_path: str | None = None,
         kernel: str | None = None, revision: str | None = None, **options) -> Predictor:
    """A Predictor for the model in ``path``: a ``save_pretrained`` directory, a training run
    directory (its model-probe/, else model/), or a Hugging Face Hub id ("org/name", at
    ``revision``; from the local cache when offline). device: "cpu", "cuda", "auto"; hubert_path:
    the pretrained HuBERT of a hubert model if not at its recorded path; options: see Predictor."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not is_local(path):
        model = SERModel.from_pretrained(path, revision=revision, device=device, hubert_path=hubert_path, kernel=kernel)
        return Predictor(model, source=str(path), **options)
    directory = resolve_model_dir(path)
    model = from_pretrained(directory, device=device, hubert_path=hubert_path, kernel=kernel)
    return Predictor(model, source=str(directory), **options)
