"""Kaldi log-mel filterbank features with per-utterance CMVN, for one waveform or many at once.

``fbank_features`` is torchaudio's ``compliance.kaldi.fbank`` on one utterance (the definition:
training caches it). ``fbank_features_batch`` computes the same numbers for many utterances in one
pass: every utterance's frames are stacked into one (N, window) matrix, so the framing, FFT and
mel product run once per batch instead of once per utterance, and the mel bank and window are
built once per process instead of on every call. torchaudio has no batched Kaldi fbank; the steps
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


def _check(wave: torch.Tensor) -> None:
    if wave.dim() != 1 or wave.numel() < WINDOW:
        raise ValueError(f"need a 1-d waveform of at least {WINDOW} samples (one frame), got {tuple(wave.shape)}")


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
    ``fbank_features(waves[i])`` up to float rounding, computed in one pass over all frames."""
    if not waves:
        return []
    for wave in waves:
        _check(wave)
    return _cmvn_segments(log_mel_batch(waves, num_mel_bins), [1 + (w.numel() - WINDOW) // SHIFT for w in waves])


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
