"""read_wav / write_wav: mono mixing, resampling, atomic writes, and errors that name the file."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from lpmn_fast.data.audio import AudioError, audio_problem, read_wav, write_wav


def _tone(rate: int, seconds: float, hz: float = 440.0) -> np.ndarray:
    return np.sin(2 * np.pi * hz * np.arange(int(rate * seconds)) / rate)


def test_round_trip_16k_mono_is_16bit_and_exact_to_quantisation(tmp_path):
    path = tmp_path / "a.wav"
    x = 0.5 * _tone(16000, 0.25)
    write_wav(path, torch.tensor(x), 16000)
    info = soundfile.info(path)
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    y = read_wav(path)
    assert y.dtype == torch.float32 and y.shape == (len(x),)
    assert np.abs(y.numpy() - x).max() <= 1 / 32767


def test_8k_stereo_becomes_16k_mono_of_the_right_length_and_content(tmp_path):
    path = tmp_path / "stereo8k.wav"
    tone = _tone(8000, 0.5, hz=300.0)
    soundfile.write(path, np.stack([0.6 * tone, 0.2 * tone], axis=1), 8000, subtype="PCM_16")
    y = read_wav(path, sample_rate=16000)
    assert y.shape == (8000,)  # 0.5 s at 16 kHz
    expected = 0.4 * _tone(16000, 0.5, hz=300.0)  # the channel mean, at the new rate
    middle = slice(1000, 7000)  # away from the resampler's edge effects
    assert np.abs(y.numpy()[middle] - expected[middle]).max() < 0.01


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "FLOAT"])
@pytest.mark.parametrize("channels", [1, 2, 3])
def test_read_equals_soundfiles_float_read_whole_and_in_spans(tmp_path, subtype, channels):
    # 16-bit PCM takes read_wav's int16 path (scaled by 1/32768 itself): it must give soundfile's
    # float32 values bit for bit, like the other subtypes, whole and in spans (start/end in seconds).
    rng = np.random.default_rng(5)
    data = np.clip(rng.normal(0, 0.3, (16003, channels)), -1, 1)
    data[:4] = [[-1.0] * channels, [1.0 - 2**-15] * channels, [0.0] * channels, [2**-15] * channels]  # the extremes
    path = tmp_path / f"{subtype}-{channels}.wav"
    soundfile.write(path, data, 16000, subtype=subtype)
    want, _ = soundfile.read(path, dtype="float32", always_2d=True)
    mono = want.mean(axis=1) if channels > 1 else want[:, 0]
    assert torch.equal(read_wav(path), torch.from_numpy(mono))
    assert torch.equal(read_wav(path, start=0.25, end=0.5), torch.from_numpy(mono[4000:8000]))
    assert torch.equal(read_wav(path, start=0.9), torch.from_numpy(mono[14400:]))
    with pytest.raises(AudioError, match="empty between 2 s"):
        read_wav(path, start=2.0, end=3.0)  # past the end


def test_missing_file_raises_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.wav"):
        read_wav(tmp_path / "nothere.wav")
    assert "missing" in audio_problem(tmp_path / "nothere.wav")


@pytest.mark.parametrize("content", [b"", b"not audio at all", b"RIFF\x24\x00\x00\x00WAVEfmt garbage"])
def test_corrupt_file_raises_audio_error_naming_it(tmp_path, content):
    path = tmp_path / "broken.wav"
    path.write_bytes(content)
    with pytest.raises(AudioError, match="broken.wav"):
        read_wav(path)
    with pytest.raises(ValueError):  # AudioError is a ValueError: callers may catch either
        read_wav(path)
    assert "broken.wav" in audio_problem(path)


def test_empty_wav_raises_audio_error(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros((0, 1)), 16000, subtype="PCM_16")
    with pytest.raises(AudioError, match="empty.wav.*empty"):
        read_wav(path)
    assert "empty" in audio_problem(path)
    assert audio_problem(tmp_path / "ok.wav") is not None  # missing
    write_wav(tmp_path / "ok.wav", np.zeros(10), 16000)
    assert audio_problem(tmp_path / "ok.wav") is None


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "keep.wav"
    write_wav(path, 0.1 * _tone(16000, 0.1), 16000)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="clip"):
        write_wav(path, 2.0 * _tone(16000, 0.1), 16000)
    with pytest.raises(ValueError, match="NaN"):
        write_wav(path, np.full(10, np.nan), 16000)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.wav"]


def test_write_replaces_an_existing_file_and_creates_folders(tmp_path):
    path = tmp_path / "deep" / "er" / "x.wav"
    write_wav(path, np.zeros(100), 16000)
    write_wav(path, 0.25 * np.ones(50), 8000)
    info = soundfile.info(path)
    assert (info.frames, info.samplerate) == (50, 8000)
    assert [p.name for p in path.parent.iterdir()] == ["x.wav"]


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    import os
    import stat

    from lpmn_fast.data.atomic import write_text_atomic

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    written = tmp_path / "atomic.txt"
    write_text_atomic(written, "x")
    assert stat.S_IMODE(os.stat(written).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
