"""Cross-validation splits: leave-one-session-out (IEMOCAP layout) and stratified k-fold (MER2023).

* ``loso`` (the paper, section 4.1): train on four sessions, validate AND test on the held-out
  one. Checkpoint selection then sees the test set, as in the paper.
* ``loso-speaker``: train on four sessions; validate on one speaker of the held-out session and
  test on the other, so the test speaker never influences model selection.
* ``kfold`` (MER2023, section 4.1: random partitions into five parts): scikit-learn's
  StratifiedKFold (shuffled, seeded) picks each test fold; the validation set is, per class,
  a seeded random ``valid_fraction`` (rounded, at least one) of that class in the other folds; the
  rest trains. The test fold never influences model selection.
* ``speaker-kfold`` (your own corpus with speakers): scikit-learn's StratifiedGroupKFold
  (shuffled, seeded) over the speakers, so no test speaker is seen in training; validation =
  whole speakers of the training folds (seeded, about ``valid_fraction`` of their utterances).
* ``column`` (a manifest's ``split`` column): the train/valid/test rows as the manifest says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ..data.corpus import Utterance

SPLITS = ("loso", "loso-speaker", "kfold", "speaker-kfold", "column")


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
    if sessions == [0]:
        raise ValueError("leave-one-session-out needs sessions, and this corpus has none (a manifest needs a "
                         "'session' or 'fold' column; otherwise use split kfold or speaker-kfold)")
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


def _check_folds(name: str, fold: int, folds: int, valid_fraction: float) -> None:
    if folds < 2:
        raise ValueError(f"{name} needs at least 2 folds, got {folds}")
    if not 1 <= fold <= folds:
        raise ValueError(f"fold must be in [1, {folds}], got {fold}")
    if not 0 < valid_fraction < 1:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")


def stratified_kfold(utterances: Sequence[Utterance], fold: int, *, folds: int = 5, seed: int = 0,
                     valid_fraction: float = 0.1) -> Split:
    """Fold ``fold`` (1-based) of ``folds`` stratified, shuffled folds seeded by ``seed``.

    Test: that fold. Validation: per class, ``round(valid_fraction * n)`` (at least 1) of the
    class's n utterances in the other folds, drawn with seed ``seed + fold``. Train: the rest.
    (Per-class rounding rather than scikit-learn's train_test_split: that one may leave a small
    class out of the validation set.)
    """
    _check_folds("kfold", fold, folds, valid_fraction)
    ids = [u.utt_id for u in utterances]
    if len(set(ids)) != len(ids):
        raise ValueError("kfold needs unique utterance ids; the corpus repeats some")
    labels = np.array([u.label for u in utterances])
    classes, counts = np.unique(labels, return_counts=True)
    if counts.min() < folds:
        rare = {str(c): int(n) for c, n in zip(classes, counts) if n < folds}
        raise ValueError(f"stratified {folds}-fold cross-validation needs at least {folds} utterances per class; "
                         f"classes {rare} have fewer")
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    rest, test = list(splitter.split(np.zeros(len(labels)), labels))[fold - 1]
    rng = np.random.default_rng(seed + fold)
    valid = []
    for c in classes:
        members = rest[labels[rest] == c]
        if len(members) < 2:
            raise ValueError(f"fold {fold}: class {str(c)!r} has {len(members)} utterance(s) outside the test fold; "
                             "need 2 to put one in training and one in validation")
        take = min(max(1, round(valid_fraction * len(members))), len(members) - 1)
        valid.extend(rng.permutation(members)[:take].tolist())
    train = sorted(set(rest.tolist()) - set(valid))
    def pick(idx) -> tuple[Utterance, ...]:
        return tuple(utterances[i] for i in sorted(idx))  # corpus order within each part

    protocol = (f"kfold(fold={fold}/{folds}, seed={seed}, valid=stratified {valid_fraction:g} of the training "
                "folds)")
    return Split(protocol, pick(train), pick(valid), pick(test))


def speaker_kfold(utterances: Sequence[Utterance], fold: int, *, folds: int = 5, seed: int = 0,
                  valid_fraction: float = 0.1) -> Split:
    """Fold ``fold`` (1-based) of ``folds`` speaker-independent folds, stratified by class as far as
    whole speakers allow (StratifiedGroupKFold, shuffled, seeded by ``seed``).

    Test: that fold's speakers. Validation: speakers of the other folds drawn in a seeded order
    (seed ``seed + fold``) until they hold ``valid_fraction`` of those utterances (at least one
    speaker, and at least one left to train). Train: the remaining speakers.
    """
    _check_folds("speaker-kfold", fold, folds, valid_fraction)
    speakers = np.array([u.speaker for u in utterances])
    if (speakers == "").any():
        raise ValueError("speaker-kfold needs a speaker for every utterance (a manifest's speaker column); "
                         f"{int((speakers == '').sum())} have none")
    names = sorted(set(speakers.tolist()))
    if len(names) < folds + 2:
        raise ValueError(f"speaker-independent {folds}-fold cross-validation needs at least {folds + 2} speakers "
                         f"(test, validation and training speakers in every fold); the corpus has {len(names)}")
    labels = np.array([u.label for u in utterances])
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    rest, test = list(splitter.split(np.zeros(len(labels)), labels, groups=speakers))[fold - 1]
    rest_speakers = sorted(set(speakers[rest].tolist()))
    order = np.random.default_rng(seed + fold).permutation(len(rest_speakers))
    chosen, taken = [], 0
    for i in order:
        if chosen and (taken >= valid_fraction * len(rest) or len(chosen) == len(rest_speakers) - 1):
            break
        chosen.append(rest_speakers[i])
        taken += int((speakers[rest] == rest_speakers[i]).sum())
    valid = [i for i in rest if speakers[i] in chosen]
    train = [i for i in rest if speakers[i] not in chosen]

    def pick(idx) -> tuple[Utterance, ...]:
        return tuple(utterances[i] for i in sorted(idx))  # corpus order within each part

    protocol = (f"speaker-kfold(fold={fold}/{folds}, seed={seed}, valid=speakers {', '.join(sorted(chosen))}; "
                "no test speaker in training)")
    return Split(protocol, pick(train), pick(valid), pick(test))


def column_split(utterances: Sequence[Utterance]) -> Split:
    """The train/valid/test parts a manifest's ``split`` column gives (Utterance.split)."""
    parts = {name: tuple(u for u in utterances if u.split == name) for name in ("train", "valid", "test")}
    unset = sum(1 for u in utterances if u.split is None)
    if unset:
        raise ValueError(f"split 'column' needs a split (train, valid or test) for every utterance; {unset} have "
                         "none (no split column in the manifest?)")
    empty = [name for name, part in parts.items() if not part]
    if empty:
        raise ValueError(f"the split column leaves {empty} empty; every part needs at least one utterance "
                         "(valid picks the best epoch, test is reported)")
    counts = ", ".join(f"{name} {len(part)}" for name, part in parts.items())
    return Split(f"column(the manifest's split column: {counts})", parts["train"], parts["valid"], parts["test"])


def fold_ids(name: str, utterances: Sequence[Utterance], *, folds: int = 5) -> list[int]:
    """The folds of split ``name``: the sessions (loso, loso-speaker), 1..folds (kfold,
    speaker-kfold) or the single fold 1 (column)."""
    if name in ("loso", "loso-speaker"):
        return sorted({u.session for u in utterances})
    if name in ("kfold", "speaker-kfold"):
        return list(range(1, folds + 1))
    if name == "column":
        return [1]
    raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")


def loso_valid_speaker(held: Sequence[Utterance], test_session: int, seed: int = 0) -> str:
    """The validation speaker of loso-speaker's held-out session: of its speakers sorted by name,
    the one at index (seed + test_session) mod their count. Successive sessions thus alternate
    between the speakers (in IEMOCAP and the synthetic corpus, between the female and the male
    speaker: sessions 1, 3, 5 validate on the second name, 2 and 4 on the first, with seed 0),
    and another --fold-seed swaps them."""
    speakers = sorted({u.speaker for u in held})
    return speakers[(seed + test_session) % len(speakers)]


def make_split(name: str, utterances: Sequence[Utterance], test_session: int, *, folds: int = 5, seed: int = 0,
               valid_fraction: float = 0.1) -> Split:
    """The split called ``name`` (one of SPLITS) holding out fold ``test_session`` (the session for
    loso/loso-speaker, the fold number for kfold and speaker-kfold, ignored by column);
    ``loso-speaker`` validates on :func:`loso_valid_speaker`'s speaker; ``folds``, ``seed`` and ``valid_fraction``
    are kfold's and speaker-kfold's (``seed`` also loso-speaker's) (see :func:`stratified_kfold`, :func:`speaker_kfold`)."""
    if name == "loso":
        return leave_one_session_out(utterances, test_session)
    if name == "loso-speaker":
        _, held = _held_out(utterances, test_session)
        return leave_one_session_out(utterances, test_session, valid_speaker=loso_valid_speaker(held, test_session,
                                                                                                seed))
    if name == "kfold":
        return stratified_kfold(utterances, test_session, folds=folds, seed=seed, valid_fraction=valid_fraction)
    if name == "speaker-kfold":
        return speaker_kfold(utterances, test_session, folds=folds, seed=seed, valid_fraction=valid_fraction)
    if name == "column":
        return column_split(utterances)
    raise ValueError(f"unknown split {name!r}; choose one of {SPLITS}")
