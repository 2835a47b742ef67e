"""WAV input and output: soundfile for the file, torchaudio's pure-Python resampler for the rate.

torchaudio.load/save need torchcodec or torchaudio's compiled libraries, which the set-up may
disable (see lpmn_fast.torchaudio_compat), so they are never used here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import soundfile
import torch
import torchaudio.functional

from .atomic import atomic_path


class AudioError(ValueError):
    """A file that exists but is not usable audio: unreadable, corrupt, empty or non-finite."""


def read_wav(path: str | os.PathLike, sample_rate: int = 16000, *, start: float | None = None,
             end: float | None = None) -> torch.Tensor:
    """Read an audio file as a float32 mono waveform (samples,) in [-1, 1] at ``sample_rate`` Hz.

    Channels are averaged; a file at another rate is resampled (torchaudio.functional.resample,
    windowed sinc). ``start``/``end`` (seconds) read only that span of the file (a manifest's
    segment); only the span is decoded. Raises FileNotFoundError for a missing file and
    AudioError (a ValueError) naming the file when it cannot be decoded, has zero samples (in the
    span) or holds NaN/Inf.
    """
    path = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not path.is_file():
        raise FileNotFoundError(f"audio file not found: {path}")
    try:
        with soundfile.SoundFile(path) as audio:
            file_rate = audio.samplerate
            first, last = _span(audio.frames, file_rate, start, end)
            if first:
                audio.seek(first)
            # 16-bit PCM is read as int16 and scaled here: libsndfile's int-to-float conversion costs
            # about 3x the read, and x / 32768 is what it computes (exact in float32; tested).
            pcm16 = audio.subtype == "PCM_16"
            data = audio.read(last - first, dtype="int16" if pcm16 else "float32",
                              always_2d=True)  # (frames, channels)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioError(f"cannot decode audio file {path}: {e}") from e
    if data.shape[0] == 0 or data.shape[1] == 0:
        span = "" if start is None and end is None else f" between {start or 0:g} s and {end} s"
        raise AudioError(f"audio file {path} is empty{span} (zero samples)")
    samples = torch.from_numpy(data)
    if pcm16:
        samples = samples.to(torch.float32).mul_(1 / 32768)  # in torch: numpy's int16 -> float32 is 4x slower
    mono = samples.mean(dim=1) if samples.shape[1] > 1 else samples[:, 0]
    if not pcm16 and not bool(torch.isfinite(mono).all()):
        raise AudioError(f"audio file {path} contains NaN or Inf samples")
    waveform = mono.contiguous()
    if file_rate != sample_rate:
        waveform = torchaudio.functional.resample(waveform, file_rate, sample_rate)
    return waveform


def _span(frames: int, rate: int, start: float | None, end: float | None) -> tuple[int, int]:
    """(first, last) sample of the ``start``-``end`` span (seconds; None: the file's edge) of a file
    of ``frames`` samples at ``rate`` Hz, clipped as soundfile.read(start=, stop=) clips; last >= first."""
    first, last, _ = slice(None if start is None else round(start * rate),
                           None if end is None else round(end * rate)).indices(frames)
    return first, max(first, last)


def header_samples(path: str | os.PathLike, sample_rate: int = 16000, *, start: float | None = None,
                   end: float | None = None) -> int:
    """How many samples ``read_wav(path, sample_rate, start=start, end=end)`` returns, from the
    file's header alone: the span's samples, resampled to ``sample_rate`` (ceil(n * sample_rate /
    rate), as the resampler makes them). Raises what soundfile.info raises for an unreadable file."""
    info = soundfile.info(str(path))
    first, last = _span(info.frames, info.samplerate, start, end)
    return -(-(last - first) * sample_rate // info.samplerate)


def write_wav(path: str | os.PathLike, waveform: torch.Tensor | np.ndarray, sample_rate: int) -> None:
    """Write a mono (samples,) or multichannel (channels, samples) waveform as 16-bit PCM WAV.

    Values must be finite and within [-1, 1] (raises ValueError rather than clip or wrap). The
    file is written to a temporary name in the same folder and renamed, so ``path`` is either the
    old file or the complete new one.
    """
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    data = np.asarray(waveform, dtype=np.float32)
    if data.ndim == 2:
        data = data.T  # soundfile wants (frames, channels)
    elif data.ndim != 1:
        raise ValueError(f"waveform must be (samples,) or (channels, samples), got shape {data.shape}")
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    if not np.isfinite(data).all():
        raise ValueError(f"waveform for {path} contains NaN or Inf")
    peak = float(np.abs(data).max(initial=0.0))
    if peak > 1.0:
        raise ValueError(f"waveform for {path} peaks at {peak:.3f} > 1.0 and would clip in 16-bit PCM")
    with atomic_path(path) as tmp:
        soundfile.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV")


def read_utterance(utt, sample_rate: int = 16000) -> torch.Tensor:
    """The waveform of a corpus Utterance: its whole file, or its start/end span (see read_wav)."""
    start, end = getattr(utt, "start", None), getattr(utt, "end", None)
    return read_wav(utt.path, sample_rate, start=start, end=end)


def audio_problem(path: str | os.PathLike) -> str | None:
    """Cheap check of an audio file from its header only: a message naming the problem, or None."""
    path = Path(path)
    if not path.is_file():
        return f"missing audio file {path}"
    try:
        info = soundfile.info(path)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        return f"corrupt or unreadable audio file {path}: {e}"
    if info.frames == 0:
        return f"empty audio file {path} (zero samples)"
    return None
