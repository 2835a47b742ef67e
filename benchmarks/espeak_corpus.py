"""A held-out speech corpus from espeak-ng: one phrase of each utterance carries the emotion.

    python -m benchmarks.espeak_corpus --out runs/espeak-corpus        # needs espeak-ng on PATH
    lpmn-train --data manifest --manifest runs/espeak-corpus/manifest.csv --split loso-speaker ...

IEMOCAP's shape: 5 sessions x 2 speakers (espeak-ng's male and female voice variants, with a
per-speaker base pitch and rate), four classes (neutral, happy, angry, sad), balanced per speaker.
Each utterance is a neutral carrier sentence, then a phrase, then another neutral carrier
sentence; the phrase is spoken with the class's prosody (angry: louder, faster, higher; happy:
higher, a little faster; sad: quieter, slower, lower; neutral: the speaker's own). Texts are drawn
independently of the label, every utterance gets a random overall gain (+-6 dB) and small jitter
of rate and pitch, so only the local phrase's prosody relative to its carriers tells the class:
the paper's premise, with real (if synthetic) speech rather than lpmn_fast's source-filter model.
Unlike lpmn_fast.data.synthetic, nothing here was tuned on the models. Written as 16 kHz mono
WAV files plus ``manifest.csv`` (path, label, speaker, session), read by ``--data manifest``.
"""

from __future__ import annotations

import argparse
import csv
import io
import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
CLASSES = ("neutral", "happy", "angry", "sad")
CARRIERS = (
    "I went to the station this morning", "the meeting starts after lunch", "we talked about it yesterday",
    "she left the keys on the table", "they will call us again next week", "the train was almost empty",
    "he wrote the letter by hand", "our neighbours moved in last month", "the results came in the post",
    "you can read the report tonight",
)
PHRASES = (
    "that is what they told me", "I cannot believe it", "look at this now", "it happened again",
    "we are going home", "nobody said a word", "this is the answer", "you did it yourself",
)
# class -> (amplitude ratio, speed ratio, pitch offset on espeak's 0-99 scale)
PROSODY = {"neutral": (1.0, 1.0, 0), "happy": (1.15, 1.12, 22), "angry": (1.8, 1.3, 12), "sad": (0.55, 0.7, -18)}


def espeak(text: str, voice: str, amplitude: int, speed: int, pitch: int) -> np.ndarray:
    """espeak-ng's rendering of ``text`` as float32 samples at 16 kHz."""
    out = subprocess.run(["espeak-ng", "-v", voice, "-a", str(amplitude), "-s", str(speed), "-p", str(pitch),
                          "--stdout", text], check=True, capture_output=True).stdout
    with wave.open(io.BytesIO(out)) as w:
        rate, data = w.getframerate(), np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    audio = data.astype(np.float32) / 32768.0
    return resample_poly(audio, SAMPLE_RATE, rate).astype(np.float32) if rate != SAMPLE_RATE else audio


def write_wav(path: Path, audio: np.ndarray) -> None:
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm.tobytes())


def make_corpus(out: Path, utterances_per_speaker: int = 48, seed: int = 0) -> Path:
    """Write the corpus into ``out``; return its manifest path."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not on PATH (apt-get install espeak-ng)")
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for session in range(1, 6):
        for gender, variant in (("F", f"f{(session - 1) % 5 + 1}"), ("M", f"m{(session - 1) % 7 + 1}")):
            speaker = f"Ses{session:02d}{gender}"
            base_pitch = int(rng.integers(35, 65))
            base_speed = int(rng.integers(150, 185))
            labels = [CLASSES[i % len(CLASSES)] for i in range(utterances_per_speaker)]
            for i, label in enumerate(rng.permutation(labels)):
                amp_ratio, speed_ratio, pitch_offset = PROSODY[label]
                jitter_speed = base_speed * float(rng.uniform(0.95, 1.05))
                jitter_pitch = base_pitch + int(rng.integers(-3, 4))
                parts = []
                first, last = rng.choice(len(CARRIERS), 2, replace=False)
                for text, (a, s, p) in ((CARRIERS[first], (1.0, 1.0, 0)),
                                        (PHRASES[rng.integers(len(PHRASES))], (amp_ratio, speed_ratio, pitch_offset)),
                                        (CARRIERS[last], (1.0, 1.0, 0))):
                    parts.append(espeak(text, f"en+{variant}", int(round(60 * a)), int(round(jitter_speed * s)),
                                        int(np.clip(jitter_pitch + p, 0, 99))))
                    parts.append(np.zeros(int(SAMPLE_RATE * rng.uniform(0.05, 0.2)), np.float32))
                audio = np.concatenate(parts) * float(10 ** (rng.uniform(-6, 6) / 20))
                name = f"{speaker}_{i:03d}.wav"
                write_wav(out / name, audio)
                rows.append({"path": name, "label": label, "speaker": speaker, "session": session})
    manifest = out / "manifest.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "speaker", "session"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="output folder (WAVs and manifest.csv)")
    parser.add_argument("--utterances-per-speaker", type=int, default=48)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(make_corpus(args.out, args.utterances_per_speaker, args.seed))


if __name__ == "__main__":
    main()
