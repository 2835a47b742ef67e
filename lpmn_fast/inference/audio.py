"""Inference input: any waveform or audio file -> a checked 16 kHz mono waveform.

Reading goes through lpmn_fast.data.audio.read_wav (soundfile; torchaudio.load is not used),
resampling through torchaudio.functional.resample. Every problem raises InputError (a
ValueError) saying what is wrong, so a caller can report it per file and go on.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import soundfile
import torch
import torchaudio.functional

from ..data.audio import AudioError, read_wav
from ..data.audio import header_samples as audio_header_samples
from ..models.backbones import SAMPLE_RATE
# More channels than this in a 2-D waveform is no audio layout we know: an error, not a guess.
MAX_CHANNELS = 8
# Below -80 dBFS: digital silence, or the +-1..3 LSB dither of a silent 16-bit recording.
SILENCE_PEAK = 1e-4


class InputError(ValueError):
    """Audio that cannot be classified: missing, undecodable, empty, silent or too short."""


def channels_first(wave: torch.Tensor) -> torch.Tensor:
    """A 2-D waveform as (channels, samples): the smaller dimension is the channels, at most
    MAX_CHANNELS of them. (samples, channels) is what soundfile and librosa's ``mono=False`` (the
    latter transposed) hand over, (channels, samples) what torchaudio does. When both dimensions
    could be channels the layout is ambiguous: (channels, samples) is assumed and a warning says so."""
    rows, cols = wave.shape
    if min(rows, cols) > MAX_CHANNELS:
        raise InputError(f"waveform of shape {(rows, cols)}: neither dimension is a channel count (at most "
                         f"{MAX_CHANNELS}); give (samples,), (channels, samples) or (samples, channels)")
    if max(rows, cols) <= MAX_CHANNELS or rows == cols:
        warnings.warn(f"waveform of shape {(rows, cols)} is ambiguous: read as (channels, samples) = ({rows}, "
                      f"{cols}); transpose it if it is (samples, channels)", UserWarning, stacklevel=3)
        return wave
    return wave if rows < cols else wave.T


def to_mono_16k(waveform, sample_rate: int) -> torch.Tensor:
    """waveform: (samples,), (channels, samples) or (samples, channels) tensor or array -> float32
    (samples,) at 16 kHz.

    The smaller dimension of a 2-D waveform is the channels (at most 8; see :func:`channels_first`);
    channels are averaged; another rate is resampled (windowed sinc).
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise InputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    wave = torch.as_tensor(np.asarray(waveform) if not isinstance(waveform, torch.Tensor) else waveform)
    if wave.dim() == 2:
        wave = channels_first(wave).float().mean(0)
    elif wave.dim() != 1:
        raise InputError(f"waveform must be (samples,), (channels, samples) or (samples, channels), got shape "
                         f"{tuple(wave.shape)}")
    if wave.numel() == 0:
        raise InputError("empty audio (zero samples)")
    wave = wave.float().cpu()
    if not all(map(math.isfinite, map(float, torch.aminmax(wave)))):  # NaN or Inf shows in the min or max
        raise InputError("audio contains NaN or Inf samples")
    if int(sample_rate) != SAMPLE_RATE:
        wave = torchaudio.functional.resample(wave, int(sample_rate), SAMPLE_RATE)
    return wave.contiguous()


def check_waveform(wave: torch.Tensor, min_samples: int) -> torch.Tensor:
    """Raise InputError if ``wave`` (samples,) at 16 kHz is silent or shorter than one frame."""
    if wave.numel() < min_samples:
        raise InputError(f"too short: {wave.numel() / SAMPLE_RATE:.3f} s ({wave.numel()} samples at 16 kHz) is "
                         f"less than one frame ({min_samples / SAMPLE_RATE * 1000:g} ms = {min_samples} samples)")
    low, high = torch.aminmax(wave)  # one pass, no |wave| copy
    peak = max(abs(float(low)), abs(float(high)))
    if peak < SILENCE_PEAK:
        raise InputError(f"all-silent audio (peak amplitude {peak:.2g} < {SILENCE_PEAK:g}, i.e. below -80 dBFS): "
                         "nothing to classify")
    return wave


def load_audio(path: str | os.PathLike) -> torch.Tensor:
    """The file at ``path`` as float32 mono (samples,) at 16 kHz; InputError naming the file if unusable."""
    try:
        return read_wav(path, SAMPLE_RATE)
    except FileNotFoundError as error:
        raise InputError(str(error)) from error
    except AudioError as error:
        raise InputError(f"{error} (not an audio file soundfile can read?)"
                         if "cannot decode" in str(error) else str(error)) from error


@dataclass(frozen=True)
class PendingAudio:
    """An audio file decoded only when its batch is prepared (in the background, see
    Predictor.predict_stream). samples: its length at 16 kHz as the file's header tells, used only
    to group similar lengths (0 when the header cannot be read: ``load`` then says why); load():
    the checked-or-not waveform, float32 (samples,) at 16 kHz, or InputError naming the file."""

    samples: int
    load: Callable[[], torch.Tensor]


def pending_audio(path: str | os.PathLike, start: float | None = None, end: float | None = None) -> PendingAudio:
    """A :class:`PendingAudio` for ``path`` (its ``start``-``end`` span in seconds, if given); reads the header only."""

    def load() -> torch.Tensor:
        try:
            if start is None and end is None:
                return load_audio(path)
            return read_wav(path, SAMPLE_RATE, start=start, end=end)
        except InputError:
            raise
        except (FileNotFoundError, ValueError) as error:  # a span the file does not have, say
            raise InputError(str(error)) from error

    return PendingAudio(header_samples(path, start, end), load)


def header_samples(path: str | os.PathLike, start: float | None = None, end: float | None = None) -> int:
    """The length at 16 kHz of ``path`` (its ``start``-``end`` span) from its header; 0 if unreadable."""
    try:
        return audio_header_samples(path, SAMPLE_RATE, start=start, end=end)
    except (soundfile.LibsndfileError, RuntimeError, TypeError, OSError):
        return 0
