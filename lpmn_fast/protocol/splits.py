"""Leave-one-session-out splits of IEMOCAP-layout corpora (the real one and the synthetic one).

* ``loso`` (the paper, section 4.1): train on four sessions, validate AND test on the held-out
  one. Checkpoint selection then sees the test set, as in the paper.
* ``loso-speaker``: train on four sessions; validate on one speaker of the held-out session and
  test on the other, so the test speaker never influences model selection.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..data.corpus import Utterance

SPLITS = ("loso", "loso-speaker")


@dataclass(frozen=True)
class Split:
    """Utterances of one fold. ``protocol`` names how they were chosen (recorded in results)."""

    protocol: str
    train: tuple[Utterance, ...]
    valid: tuple[Utterance, ...]
    test: tuple[Utterance, ...]

    def describe(self) -> dict:
        return {"protocol": self.protocol, "train": len(self.train), "valid": len(self.valid), "test": len(self.test)}


def _held_out(utterances: Sequence[Utterance], test_session: int) -> tuple[list[Utterance], list[Utterance]]:
    sessions = sorted({u.session for u in utterances})
    if test_session not in sessions:
        raise ValueError(f"test session {test_session} is not in the corpus; its sessions are {sessions}")
    if len(sessions) < 2:
        raise ValueError(f"leave-one-session-out needs at least 2 sessions, the corpus has {sessions}")
    train = [u for u in utterances if u.session != test_session]
    held = [u for u in utterances if u.session == test_session]
    return train, held


def leave_one_session_out(
    utterances: Sequence[Utterance], test_session: int, *, valid_speaker: str | None = None
) -> Split:
    """Split ``utterances`` holding out ``test_session`` (1-based).

    valid_speaker None: the paper's protocol, validation = test = the held-out session.
    Otherwise that speaker of the held-out session is the validation set, the others the test set.
    """
    train, held = _held_out(utterances, test_session)
    if valid_speaker is None:
        return Split(f"loso(test_session={test_session})", tuple(train), tuple(held), tuple(held))
    speakers = sorted({u.speaker for u in held})
    if valid_speaker not in speakers or len(speakers) < 2:
        raise ValueError(
            f"valid_speaker {valid_speaker!r} must be one of at least two speakers of session {test_session}, "
            f"which has {speakers}"
        )
    valid = tuple(u for u in held if u.speaker == valid_speaker)
    test = tuple(u for u in held if u.speaker != valid_speaker)
    return Split(f"loso-speaker(test_session={test_session}, valid_speaker={valid_speaker})", tuple(train), valid, test)


def make_split(name: str, utterances: Sequence[Utterance], test_session: int) -> Split:
    """The split called ``name`` (one of SPLITS); ``loso-speaker`` validates on the first speaker (sorted)."""
    if name == "loso":
        return leave_one_session_out(utterances, test_session)
    if name == "loso-speaker":
        _, held = _held_out(utterances, test_session)
        return leave_one_session_out(utterances, test_session, valid_speaker=min(u.speaker for u in held))
    raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
