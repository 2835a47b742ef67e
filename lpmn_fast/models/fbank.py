"""Kaldi log-mel filterbank features with per-utterance CMVN, for one waveform or many at once.

``fbank_features`` is torchaudio's ``compliance.kaldi.fbank`` on one utterance (the definition:
training caches it). ``fbank_features_batch`` computes the same numbers for many utterances at once:
the frames of consecutive utterances are stacked into (N, 512) matrices of up to FRAMES_PER_PASS
rows (an utterance longer than that makes a pass of its own), so the FFT and mel product run once
per pass instead of once per utterance, and the mel
bank and window are built once per process instead of on every call. torchaudio has no batched Kaldi fbank; the steps
below are kaldi.fbank's for the options used here (povey window, dither 0, DC removal,
pre-emphasis 0.97, power spectrum, 512-point FFT, log), tested equal to it up to float rounding.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torchaudio.compliance import kaldi

SAMPLE_RATE = 16000
FRAME_SHIFT_MS = 20.0  # HuBERT's frame rate (section 4.1), used by the fbank backbone too
FRAME_LENGTH_MS = 25.0
WINDOW = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400 samples
SHIFT = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 320 samples
FFT_SIZE = 512  # the window rounded up to a power of two, as Kaldi does
PREEMPHASIS = 0.97
INT16_SCALE = 32768.0  # Kaldi's features are defined on int16 sample values
LOW_HZ, VTLN_LOW_HZ, VTLN_HIGH_HZ = 20.0, 100.0, -500.0  # kaldi.fbank's defaults
# Frames per batched pass: 2 MiB of FFT input (a core's L2 on the dev machine). 16 files of the
# synthetic corpus: 0.34 ms per utterance in passes of 1024 frames, 0.47 in one pass (2-core x86
# dev machine, one thread, median of 20).
FRAMES_PER_PASS = 1024


def _check(wave: torch.Tensor) -> None:
    if wave.dim() != 1 or wave.numel() < WINDOW:
        raise ValueError(f"need a 1-d waveform of at least {WINDOW} samples (one frame), got {tuple(wave.shape)}")


def frame_count(samples: int) -> int:
    """Frames of ``samples`` at 16 kHz: 25 ms windows every 20 ms, edges snipped as Kaldi does (0 if
    shorter than one window)."""
    return 1 + (samples - WINDOW) // SHIFT if samples >= WINDOW else 0


def _cmvn(feats: torch.Tensor) -> torch.Tensor:
    # Per-utterance mean/variance normalisation removes channel and loudness offsets... partly:
    # the log-energy contour inside the utterance (what carries the synthetic emotion) survives.
    return (feats - feats.mean(0)) / feats.std(0, unbiased=False).clamp_min(1e-5)


def fbank_features(wave: torch.Tensor, num_mel_bins: int = 40) -> torch.Tensor:
    """wave: (samples,) float at 16 kHz -> (T, num_mel_bins) log-mel fbank, 20 ms shift, per-utterance CMVN."""
    _check(wave)
    feats = kaldi.fbank(
        wave.float()[None] * INT16_SCALE,
        num_mel_bins=num_mel_bins,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
        dither=0.0,  # deterministic, so the cache is exact
        sample_frequency=SAMPLE_RATE,
    )
    return _cmvn(feats)


@functools.cache
def _mel_bank_interleaved(num_mel_bins: int) -> torch.Tensor:
    """(2 * (FFT_SIZE // 2 + 1), num_mel_bins) float32: kaldi.fbank's triangular filters (Nyquist
    row zero), each row twice, so that the (real, imaginary) pairs of a complex spectrum viewed as
    reals and squared meet the filters as the power spectrum does."""
    banks, _ = kaldi.get_mel_banks(num_mel_bins, FFT_SIZE, float(SAMPLE_RATE), LOW_HZ, 0.0, VTLN_LOW_HZ, VTLN_HIGH_HZ,
                                   1.0)  # (bins, FFT_SIZE // 2)
    return torch.nn.functional.pad(banks.float(), (0, 1)).T.repeat_interleave(2, dim=0).contiguous()


@functools.cache
def _scaled_povey_window() -> torch.Tensor:
    """Kaldi's povey window times the int16 scale (a power of two: the product is exact)."""
    return torch.hann_window(WINDOW, periodic=False, dtype=torch.float32).pow(0.85) * INT16_SCALE


def fbank_features_batch(waves: Sequence[torch.Tensor], num_mel_bins: int = 40) -> list[torch.Tensor]:
    """waves: (samples_i,) float at 16 kHz each -> [(T_i, num_mel_bins)], each equal to
    ``fbank_features(waves[i])`` up to float rounding."""
    if not waves:
        return []
    for wave in waves:
        _check(wave)
    counts = [frame_count(w.numel()) for w in waves]
    # In passes of at most FRAMES_PER_PASS frames (or one utterance), so that a pass's FFT buffer and
    # spectrum stay in a core's cache.
    passes, first = [], 0
    while first < len(waves):
        last, frames = first + 1, counts[first]
        while last < len(waves) and frames + counts[last] <= FRAMES_PER_PASS:
            frames += counts[last]
            last += 1
        passes.append(log_mel_batch(waves[first:last], num_mel_bins))
        first = last
    return _cmvn_segments(torch.cat(passes), counts)


def log_mel_batch(waves: Sequence[torch.Tensor], num_mel_bins: int = 40) -> torch.Tensor:
    """(sum of T_i, num_mel_bins): kaldi.fbank of each of ``waves`` (16 kHz, at least one frame
    each), before normalisation, stacked; equal to it up to float32 rounding."""
    frames = [w.float().cpu().unfold(0, WINDOW, SHIFT) for w in waves]  # (T_i, WINDOW) views, no copy
    # Kaldi per frame: remove the mean (first: a constant frame must become exactly 0), pre-emphasise
    # (y[j] = z[j] - 0.97 z[j - 1], y[0] = 0.03 z[0]), window. The povey window is 0 at j = 0, so
    # y[0] never counts: y[1:] is written straight into the FFT buffer.
    buffer = torch.empty(sum(f.shape[0] for f in frames), FFT_SIZE)
    buffer[:, 0] = 0.0
    buffer[:, WINDOW:] = 0.0  # the window zero-padded to the FFT size
    first = 0
    for f in frames:
        centred = f - f.mean(1, keepdim=True)
        torch.add(centred[:, 1:], centred[:, :-1], alpha=-PREEMPHASIS, out=buffer[first:first + f.shape[0], 1:WINDOW])
        first += f.shape[0]
    buffer[:, 1:WINDOW].mul_(_scaled_povey_window()[1:])
    spectrum = torch.view_as_real(torch.fft.rfft(buffer)).flatten(1).square_()  # (N, 2 * bins): re^2, im^2, ...
    return (spectrum @ _mel_bank_interleaved(num_mel_bins)).clamp_min_(torch.finfo(torch.float32).eps).log_()


def _cmvn_segments(feats: torch.Tensor, counts: list[int]) -> list[torch.Tensor]:
    """:func:`_cmvn` of each run of ``counts`` rows of ``feats`` (N, F), in a few batched ops."""
    n = torch.tensor(counts, dtype=feats.dtype)[:, None]  # (B, 1)
    segment = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # (N,)
    mean = feats.new_zeros(len(counts), feats.shape[1]).index_add_(0, segment, feats) / n
    centred = feats - mean[segment]
    std = (feats.new_zeros(mean.shape).index_add_(0, segment, centred.square()) / n).sqrt_().clamp_min_(1e-5)
    return list((centred / std[segment]).split(counts))
