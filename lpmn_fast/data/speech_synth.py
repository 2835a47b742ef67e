"""Speech-like audio from a source-filter model, with a prosody profile per emotion.

Voiced syllables: a Rosenberg glottal flow pulse train (shorter closing phase = more high-frequency
energy) through lip radiation, a spectral-tilt filter and a cascade of vowel formant resonators.
Unvoiced consonants: band-passed noise. Speakers differ in base pitch, formant scaling
(vocal-tract length), voice quality and speaking rate. Everything is numpy/scipy; all randomness
comes from the generator passed in, so one seed gives one waveform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000
OPEN_PHASE = 0.4  # glottal opening phase, fraction of a pitch period
BASE_RMS = 0.04  # vowel level of a neutral syllable (about -28 dBFS): headroom for loud voices
# Formants F1-F3 (Hz) of five vowels for an adult male vocal tract (Peterson & Barney style).
# F4-F7 are fixed; without them an all-pole cascade leaves almost nothing above 4 kHz (the
# "higher-pole correction" of formant synthesisers). A speaker's formant_scale multiplies them all.
VOWELS = np.array([[730, 1090, 2440], [530, 1840, 2480], [270, 2290, 3010], [570, 840, 2410], [300, 870, 2240]])
HIGH_FORMANTS_HZ = np.array([3500.0, 4500.0, 5500.0, 6500.0])
BANDWIDTHS_HZ = np.array([80.0, 100.0, 140.0, 200.0, 300.0, 400.0, 500.0])
# Fricative noise bands (Hz): /f/-like broad, /sh/-like, /s/-like.
_CONSONANTS = [signal.butter(4, band, btype="band", fs=SAMPLE_RATE, output="sos")
               for band in ((1000, 7000), (2000, 5000), (4000, 7500))]


@dataclass(frozen=True)
class Prosody:
    """How a stretch of speech is spoken.

    gain_db: level change; pitch: F0 ratio; contour: rise-fall F0 excursion per syllable
    (fraction of F0); movement: scale of declination and slow F0 drift (0 = flat); rate: syllable
    duration ratio (< 1 faster); closing: glottal closing phase (fraction of a period, smaller =
    brighter); tilt: one-pole spectral tilt (> 0 pre-emphasis, brighter; < 0 low-pass, darker);
    breath: aspiration noise relative to the voiced source.
    """

    gain_db: float = 0.0
    pitch: float = 1.0
    contour: float = 0.06
    movement: float = 1.0
    rate: float = 1.0
    closing: float = 0.3
    tilt: float = 0.0
    breath: float = 0.01


# The emotion cues of the synthetic corpus, at full strength. Sad keeps neutral breathiness:
# aspiration noise is white and would brighten the spectrum that its tilt darkens.
PROSODY = {
    "neutral": Prosody(),
    "angry": Prosody(gain_db=9.0, pitch=1.3, contour=0.02, movement=0.2, rate=0.72, closing=0.1, tilt=0.7, breath=0.0),
    "happy": Prosody(gain_db=1.0, pitch=1.3, contour=0.5, movement=1.5, rate=0.9),
    "sad": Prosody(gain_db=-10.0, pitch=0.78, contour=0.03, movement=0.5, rate=1.5, closing=0.45, tilt=-0.7),
}


def blend(emotion: str, strength: float) -> Prosody:
    """The prosody of ``emotion`` moved ``strength`` of the way from neutral (ratios in log scale)."""
    base, target = PROSODY["neutral"], PROSODY[emotion]

    def lin(a: float, b: float) -> float:
        return a + strength * (b - a)

    def log(a: float, b: float) -> float:
        return a * (b / a) ** strength

    return Prosody(
        gain_db=lin(base.gain_db, target.gain_db), pitch=log(base.pitch, target.pitch),
        contour=lin(base.contour, target.contour), movement=max(0.0, lin(base.movement, target.movement)),
        rate=log(base.rate, target.rate), closing=float(np.clip(lin(base.closing, target.closing), 0.05, 0.55)),
        tilt=float(np.clip(lin(base.tilt, target.tilt), -0.9, 0.9)), breath=max(0.0, lin(base.breath, target.breath)),
    )


@dataclass(frozen=True)
class Voice:
    """A speaker: base F0 (Hz), formant scale (vocal-tract length), closing-phase offset, rate ratio."""

    f0_hz: float
    formant_scale: float
    closing_offset: float = 0.0
    rate: float = 1.0


def random_voice(rng: np.random.Generator, gender: str) -> Voice:
    """A random female ("F") or male ("M") voice."""
    if gender == "F":
        f0, scale = rng.uniform(180, 240), rng.uniform(1.12, 1.22)
    elif gender == "M":
        f0, scale = rng.uniform(95, 135), rng.uniform(0.95, 1.05)
    else:
        raise ValueError(f"gender must be 'F' or 'M', got {gender!r}")
    return Voice(f0, scale, closing_offset=rng.uniform(-0.04, 0.04), rate=rng.uniform(0.9, 1.1))


@dataclass(frozen=True)
class Nuisance:
    """Per-utterance variation unrelated to emotion: level (dB), F0 ratio, rate ratio, channel tilt,
    noise floor (dBFS)."""

    gain_db: float = 0.0
    pitch: float = 1.0
    rate: float = 1.0
    channel_tilt: float = 0.0
    noise_db: float = -70.0


def random_nuisance(rng: np.random.Generator, scale: float) -> Nuisance:
    """Nuisance variation; ``scale`` multiplies every spread (0 = none)."""
    return Nuisance(
        gain_db=rng.normal(0, 4.0 * scale), pitch=float(np.exp(rng.normal(0, 0.08 * scale))),
        rate=float(np.exp(rng.normal(0, 0.08 * scale))), channel_tilt=rng.uniform(-0.35, 0.35) * scale,
        noise_db=rng.uniform(-75, -60),
    )


def _tilt_section(tilt: float) -> np.ndarray:
    """One sos row: pre-emphasis 1 - t z^-1 for t > 0, one-pole low-pass 1 / (1 - |t| z^-1) for t < 0."""
    return np.array([1.0, -tilt, 0, 1, 0, 0]) if tilt >= 0 else np.array([1.0, 0, 0, 1, tilt, 0])


def _vocal_tract(formants_hz: np.ndarray, tilt: float) -> np.ndarray:
    """sos (sections, 6): lip radiation, spectral tilt, one unit-DC-gain resonator per formant."""
    r = np.exp(-np.pi * BANDWIDTHS_HZ / SAMPLE_RATE)
    theta = 2 * np.pi * formants_hz / SAMPLE_RATE
    a1, a2 = -2 * r * np.cos(theta), r * r
    resonators = np.stack([1 + a1 + a2, 0 * r, 0 * r, np.ones_like(r), a1, a2], axis=1)
    radiation = np.array([[1.0, -0.97, 0, 1, 0, 0]])
    return np.concatenate([radiation, _tilt_section(tilt)[None], resonators])


def _glottal_flow(phase: np.ndarray, closing: float) -> np.ndarray:
    """Rosenberg glottal flow at fractional phase in [0, 1): raised-cosine opening, quarter-cosine closing."""
    opening = 0.5 * (1 - np.cos(np.pi * phase / OPEN_PHASE))
    closed = np.cos(0.5 * np.pi * np.minimum(phase - OPEN_PHASE, closing) / closing)
    return np.where(phase < OPEN_PHASE, opening, closed)


def _ramp(n: int, ramp: int) -> np.ndarray:
    """Raised-cosine attack and release of ``ramp`` samples (at most n // 2)."""
    ramp = max(1, min(ramp, n // 2))
    env = np.ones(n)
    edge = 0.5 * (1 - np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp))
    env[:ramp], env[n - ramp:] = edge, edge[::-1]
    return env


def _vowel(rng, n, t0_s, total_s, voice, nuis, pros) -> np.ndarray:
    """One voiced syllable of n samples starting t0_s seconds into an utterance of total_s seconds."""
    t = t0_s + np.arange(n) / SAMPLE_RATE
    u = np.arange(n) / n
    declination = 1 + pros.movement * (0.08 - 0.16 * t / total_s)
    drift = 1 + 0.03 * pros.movement * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 2 * np.pi))
    accent = 1 + pros.contour * rng.uniform(0.6, 1.0) * np.sin(np.pi * u)  # rise then fall
    f0 = voice.f0_hz * nuis.pitch * pros.pitch * declination * drift * accent
    phase = (np.cumsum(f0) / SAMPLE_RATE + rng.uniform()) % 1.0
    closing = float(np.clip(pros.closing + voice.closing_offset, 0.05, 0.55))
    source = _glottal_flow(phase, closing)
    source = source - source.mean() + pros.breath * source.std() * rng.standard_normal(n)
    formants = np.append(VOWELS[rng.integers(len(VOWELS))] * rng.uniform(0.95, 1.05, 3), HIGH_FORMANTS_HZ)
    formants = np.minimum(formants * voice.formant_scale, 7500.0)  # stay below Nyquist
    out = signal.sosfilt(_vocal_tract(formants, pros.tilt), source)
    rms = np.sqrt(np.mean(out**2)) + 1e-12
    level = BASE_RMS * 10 ** (pros.gain_db / 20) / rms
    return out * level * _ramp(n, int(0.02 * SAMPLE_RATE)) * np.linspace(1.0, 0.7, n)


def _consonant(rng, n, pros) -> np.ndarray:
    """One unvoiced (fricative-like) consonant of n samples, about 10 dB below the vowels.

    The prosody's spectral tilt applies here too, or fricatives would mask a dark voice's tilt."""
    band = _CONSONANTS[rng.integers(len(_CONSONANTS))]
    noise = signal.sosfilt(np.concatenate([band, _tilt_section(pros.tilt)[None]]), rng.standard_normal(n))
    level = 0.3 * BASE_RMS * 10 ** (pros.gain_db / 20) / (np.sqrt(np.mean(noise**2)) + 1e-12)
    return noise * level * _ramp(n, int(0.008 * SAMPLE_RATE))


def _plan(rng, length_s: float, rate: float, pause_prob: float) -> list[tuple[str, float]]:
    """(kind, seconds) items filling exactly length_s: c = consonant, v = vowel, p = pause; ends in speech."""
    items, total = [], 0.0
    while total < length_s:
        if rng.random() < 0.5:
            items.append(("c", rng.uniform(0.04, 0.08) * rate))
        items.append(("v", rng.uniform(0.09, 0.2) * rate))
        total = sum(d for _, d in items)
        if total < length_s and rng.random() < pause_prob:
            items.append(("p", rng.uniform(0.06, 0.25) * rate))
            total += items[-1][1]
    while items[-1][0] == "p":
        items.pop()
    scale = length_s / sum(d for _, d in items)
    return [(kind, d * scale) for kind, d in items]


def render_utterance(
    rng: np.random.Generator,
    voice: Voice,
    nuisance: Nuisance,
    duration_s: float,
    segment_s: tuple[float, float],
    segment_prosody: Prosody,
) -> np.ndarray:
    """A float64 waveform (samples,) at SAMPLE_RATE of ``duration_s`` seconds, peak below 1.

    Neutral speech everywhere except [segment_s[0], segment_s[1]), which is continuous speech
    (no pauses) in ``segment_prosody``. The segment is framed by short pauses in every utterance,
    neutral ones included, so the framing itself carries no label.
    """
    n_total = int(round(duration_s * SAMPLE_RATE))
    out = np.zeros(n_total)
    neutral = PROSODY["neutral"]
    rate = voice.rate * nuisance.rate
    start, end = segment_s
    lead, trail = rng.uniform(0.05, 0.15), rng.uniform(0.05, 0.15)
    gap_before, gap_after = rng.uniform(0.04, 0.1), rng.uniform(0.04, 0.1)
    chunks = [(lead, start - gap_before, neutral, 0.3), (start, end, segment_prosody, 0.0),
              (end + gap_after, duration_s - trail, neutral, 0.3)]
    for c0, c1, pros, pause_prob in chunks:
        if c1 - c0 < 0.08:  # too short for a syllable: leave it silent
            continue
        t = c0
        for kind, d in _plan(rng, c1 - c0, rate * pros.rate, pause_prob):
            t0, t = t, t + d
            i0, i1 = int(round(t0 * SAMPLE_RATE)), min(n_total, int(round(t * SAMPLE_RATE)))
            if i1 - i0 < 32:  # a sliver left by rescaling the plan: not worth a syllable
                continue
            if kind == "v":
                out[i0:i1] += _vowel(rng, i1 - i0, t0, duration_s, voice, nuisance, pros)
            elif kind == "c":
                out[i0:i1] += _consonant(rng, i1 - i0, pros)
    out = signal.sosfilt(_tilt_section(nuisance.channel_tilt)[None], out)  # the recording channel
    out = out * 10 ** (nuisance.gain_db / 20) + 10 ** (nuisance.noise_db / 20) * rng.standard_normal(n_total)
    peak = np.abs(out).max()
    if peak > 0.99:  # rare (loud voice, loud channel): scale down rather than clip
        out *= 0.99 / peak
    return out


__all__ = ["PROSODY", "SAMPLE_RATE", "Nuisance", "Prosody", "Voice", "blend", "random_nuisance", "random_voice",
           "render_utterance"]
