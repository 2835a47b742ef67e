"""The batched Kaldi fbank (lpmn_fast.models.fbank) against torchaudio's kaldi.fbank, one utterance
at a time, in float64 (the truth both float32 computations round away from)."""

from __future__ import annotations

import pytest
import torch
from torchaudio.compliance import kaldi

from lpmn_fast.models import FbankBackbone, fbank
from lpmn_fast.models.fbank import fbank_features, fbank_features_batch, log_mel_batch

# Sample counts around the frame edges (400 = one frame, 720 = two, 719 = one) and ragged ones.
LENGTHS = (400, 401, 719, 720, 1041, 12345, 64000)


def _kaldi64(wave: torch.Tensor, bins: int) -> torch.Tensor:
    return kaldi.fbank(wave.double()[None] * 32768, num_mel_bins=bins, frame_length=25.0, frame_shift=20.0,
                       dither=0.0, sample_frequency=16000)


def _speechlike(n: int, g: torch.Generator) -> torch.Tensor:
    """Noise under a slow loudness contour, plus a DC offset (which the per-frame mean removes)."""
    envelope = 0.05 + 0.2 * torch.sin(torch.arange(n) / 2000.0).abs()
    return envelope * torch.randn(n, generator=g, dtype=torch.float64) + 0.01


@pytest.mark.parametrize("bins", [40, 23])
def test_log_mel_equals_kaldi_fbank(bins):
    g = torch.Generator().manual_seed(1)
    waves = [_speechlike(n, g).float() for n in LENGTHS]
    got = log_mel_batch(waves, bins)
    want = torch.cat([_kaldi64(w, bins) for w in waves])
    assert got.shape == want.shape == (sum(1 + (n - 400) // 320 for n in LENGTHS), bins)
    # float32 log-mel energies of 5..25: 1e-4 is a few float32 ulps of the energy, far below any real change
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-4)


def test_log_mel_of_a_pure_tone_is_as_close_as_kaldi_in_float32():
    # A pure low tone leaves the high mel bins with energies at float32's noise floor, where any
    # float32 computation (kaldi.fbank's own included) is off by a lot in the log: there the batched
    # one must be no further from the float64 truth than kaldi.fbank in float32 is.
    tone = 0.3 * torch.sin(torch.arange(9999, dtype=torch.float64) * 0.05)
    truth = _kaldi64(tone, 40)
    kaldi32 = kaldi.fbank(tone.float()[None] * 32768, num_mel_bins=40, frame_length=25.0, frame_shift=20.0,
                          dither=0.0, sample_frequency=16000).double()
    got = log_mel_batch([tone.float()]).double()
    assert (got - truth).abs().max() <= (kaldi32 - truth).abs().max()
    loud = truth > 5  # the bins the tone fills
    torch.testing.assert_close(got[loud], truth[loud], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("level", [0, 328, 9830, -1])  # int16 sample values, as a 16-bit file holds
def test_held_samples_give_kaldis_empty_frames(level):
    # A held value (clipping, a muted input with a DC offset) makes whole frames constant. Kaldi removes
    # each frame's mean first, which leaves exactly 0 and the log-mel floor log(eps); removing it after
    # the pre-emphasis would leave float32 residue, and its log would be off by up to 10.
    g = torch.Generator().manual_seed(4)
    wave = _speechlike(16000, g).float()
    wave[4000:9000] = level / 32768
    want = kaldi.fbank(wave[None] * 32768, num_mel_bins=40, frame_length=25.0, frame_shift=20.0, dither=0.0,
                       sample_frequency=16000)
    floor = torch.finfo(torch.float32).eps
    assert (want == torch.tensor(floor).log()).all(dim=1).sum() >= 10  # the held frames sit on the floor
    torch.testing.assert_close(log_mel_batch([wave]), want, rtol=1e-5, atol=1e-4)


def test_batched_features_equal_one_at_a_time():
    g = torch.Generator().manual_seed(2)
    # >= 3 frames: over 1-2 frames a bin's standard deviation can be a rounding difference, which CMVN divides by
    waves = [_speechlike(n, g).float() for n in LENGTHS if n >= 1041]
    for wave, got in zip(waves, fbank_features_batch(waves)):
        want = fbank_features(wave)
        assert got.shape == want.shape
        # normalised features of unit scale; both are float32 roundings of the same numbers
        torch.testing.assert_close(got, want, rtol=1e-4, atol=2e-4)


def test_passes_of_many_frames_split_between_utterances(monkeypatch):
    # more frames than one pass holds, and one utterance longer than a pass on its own
    monkeypatch.setattr(fbank, "FRAMES_PER_PASS", 100)
    g = torch.Generator().manual_seed(6)
    waves = [_speechlike(n, g).float() for n in (16000, 12345, 40000, 1041, 16000, 16001)]  # 49, 38, 124, 3, 49, 49
    calls = []
    real = fbank.log_mel_batch
    monkeypatch.setattr(fbank, "log_mel_batch", lambda ws, bins: calls.append(len(ws)) or real(ws, bins))
    got = fbank_features_batch(waves)
    assert calls == [2, 1, 2, 1]  # 49 + 38; 124 alone; 3 + 49; 49
    for wave, features in zip(waves, got):
        torch.testing.assert_close(features, fbank_features(wave), rtol=1e-4, atol=2e-4)


def test_the_backbone_prepares_a_batch_as_it_prepares_one():
    backbone = FbankBackbone(num_mel_bins=16)
    g = torch.Generator().manual_seed(3)
    waves = [_speechlike(n, g).float() for n in (6000, 1041, 16001)]
    for wave, got in zip(waves, backbone.prepare_batch(waves)):
        torch.testing.assert_close(got, backbone.prepare(wave), rtol=1e-4, atol=2e-4)


def test_the_backbone_prepares_in_float32_under_autocast():
    # training caches float32 features; lpmn-predict --precision bf16 must see the same ones, whether a
    # batch is prepared in the caller's thread (under its autocast) or in the background (without)
    backbone = FbankBackbone(num_mel_bins=16)
    waves = [_speechlike(n, torch.Generator().manual_seed(n)).float() for n in (6000, 16001)]
    one, many = backbone.prepare(waves[0]), backbone.prepare_batch(waves)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(backbone.prepare(waves[0]), one)
        assert all(torch.equal(a, b) for a, b in zip(backbone.prepare_batch(waves), many))


def test_batched_fbank_rejects_what_fbank_rejects():
    assert fbank_features_batch([]) == []
    with pytest.raises(ValueError, match="at least 400 samples"):
        fbank_features_batch([torch.randn(1000), torch.randn(399)])
    with pytest.raises(ValueError, match="1-d waveform"):
        fbank_features_batch([torch.randn(2, 1000)])
