"""Your own corpus as a manifest: one row per utterance in a CSV, TSV or JSON Lines file.

    path,label,speaker,session
    clips/0001.wav,angry,spk01,1
    clips/0002.wav,neutral,spk01,1
    /data/long_call.flac,happy,spk02,2          <- absolute paths work too

Columns (header names are matched without case or surrounding spaces):

* ``path`` (required): the audio file, absolute or relative to the manifest's folder; any format
  soundfile reads.
* ``label`` (required): the class name, before ``label_map`` (see :func:`parse_label_map`).
* optional: ``id`` (unique utterance name; default the file's stem, made unique from the
  relative path when stems repeat), ``speaker``, ``session`` or ``fold`` (the group of the
  leave-one-session-out protocols; integers are kept, other values are numbered 1..n in sorted
  order), ``valence`` (a number: trains the valence regressor), ``split`` (train, valid or test;
  validation/val/dev mean valid), ``start``/``end`` (seconds: cut the utterance out of a longer
  file; either may be left empty for the file's start or end). Other columns are ignored.

Every problem names the manifest and line (``FILE:LINE``). Label problems (missing column,
empty or unknown label, bad valence, split, session or times, start >= end, duplicate rows or
ids) stop the load with a CorpusError listing all of them; audio problems (missing, unreadable
or empty file, a span past the file's end) skip the row with a CorpusWarning and are listed in
``warnings``, or stop the load with ``strict=True``, as the IEMOCAP loader does.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import soundfile

from .corpus import Utterance
from .problems import CorpusError, CorpusWarning, settle

FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("id", "speaker", "session", "fold", "valence", "split", "start", "end")
SPLIT_SPELLINGS = {"train": "train", "training": "train", "valid": "valid", "validation": "valid", "val": "valid",
                   "dev": "valid", "test": "test", "eval": "test"}
DROP = "-"  # label_map target that drops a label


@dataclass
class LabelledCorpus:
    """A manifest or class-folder corpus.

    source: the manifest file or class folder; utterances in file order; classes (label id order);
    counts per class (zeros included); dropped: rows per label that label_map dropped; warnings:
    one message per skipped row; columns: the manifest's recognised columns; sessions: session
    number -> the manifest's value (None without a session/fold column); label_map as applied.
    """

    source: Path
    utterances: list[Utterance]
    classes: tuple[str, ...]
    counts: dict[str, int]
    dropped: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    columns: tuple[str, ...] = ()
    sessions: dict[int, str] | None = None
    label_map: dict[str, str | None] = field(default_factory=dict)

    def details(self) -> dict:
        """What a results file records beyond the counts."""
        return {"source": str(self.source), "columns": list(self.columns), "dropped": self.dropped,
                "label_map": {k: (v if v is not None else DROP) for k, v in self.label_map.items()},
                "sessions": None if self.sessions is None else {str(k): v for k, v in self.sessions.items()}}


def parse_label_map(value: str | Mapping[str, str | None] | None) -> dict[str, str | None]:
    """``"exc:happy,fru:-"`` (or a mapping) -> {"exc": "happy", "fru": None}: rename or merge a
    label into another, or drop it (``-``). Raises ValueError naming a malformed entry."""
    if value is None or value == "":
        return {}
    if isinstance(value, Mapping):
        pairs = [(str(k), DROP if v is None else str(v)) for k, v in value.items()]
    else:
        pairs = []
        for entry in str(value).split(","):
            if not entry.strip():
                continue
            old, sep, new = entry.partition(":")
            if not sep:
                raise ValueError(f"label map entry {entry.strip()!r} is not OLD:NEW (or OLD:- to drop OLD), in "
                                 f"{value!r}")
            pairs.append((old, new))
    out: dict[str, str | None] = {}
    for old, new in pairs:
        old, new = old.strip(), new.strip()
        if not old or not new:
            raise ValueError(f"label map entry {old!r}:{new!r} needs a label on both sides (NEW '-' drops OLD)")
        if old in out:
            raise ValueError(f"label map names {old!r} twice")
        out[old] = None if new in (DROP, "") else new
    return out


def parse_classes(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    """``"a,b,c"`` or a list -> ("a", "b", "c"), in that order; None stays None (classes from the data)."""
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else list(value)
    classes = tuple(str(c).strip() for c in items if str(c).strip())
    if not classes:
        raise ValueError(f"classes {value!r} names no class")
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise ValueError(f"classes {value!r} repeats {repeated}")
    return classes


def manifest_format(path: Path) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"manifest {path}: unknown format {path.suffix!r}; name it .csv, .tsv or .jsonl "
                         "(JSON Lines: one JSON object per line)")
    return fmt


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")


def _normalise_header(names: Iterable[str], path: Path) -> list[str]:
    header = [str(n).strip().lower() for n in names]
    repeated = sorted({n for n in header if header.count(n) > 1 and n})
    if repeated:
        raise CorpusError(f"{path}:1: column(s) {repeated} appear more than once in the header")
    return header


def manifest_columns(path: str | os.PathLike) -> tuple[str, ...]:
    """The recognised columns of a manifest, read from its header (CSV/TSV) or first row (JSONL)."""
    path = Path(path).expanduser()
    fmt = manifest_format(path)
    _check_exists(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        if fmt == "jsonl":
            for line in f:
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        return ()
                    names = list(row) if isinstance(row, dict) else []
                    break
            else:
                names = []
        else:
            names = next(csv.reader(f, delimiter="\t" if fmt == "tsv" else ","), [])
    known = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    return tuple(n for n in (str(n).strip().lower() for n in names) if n in known)


def read_rows(path: str | os.PathLike) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """(header, [(line number, {column: text})]) of a CSV, TSV or JSON Lines manifest.

    Values are stripped strings ("" when missing); JSON numbers become their text. A row with more
    fields than the header, a JSON line that is not an object, or an empty file raises CorpusError
    naming FILE:LINE. Blank lines and rows whose every field is empty are skipped, counted in one
    CorpusWarning naming their lines.
    """
    path = Path(path).expanduser()
    fmt = manifest_format(path)
    _check_exists(path)
    rows: list[tuple[int, dict[str, str]]] = []
    skipped: list[int] = []  # lines of blank and all-empty rows
    with path.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: tolerate a byte-order mark
        if fmt == "jsonl":
            header: list[str] = []
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    skipped.append(line_no)
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{line_no}: not valid JSON ({e.msg})") from None
                if not isinstance(obj, dict):
                    raise CorpusError(f"{path}:{line_no}: a JSON Lines manifest needs one object per line, got "
                                      f"{type(obj).__name__}")
                keys = _normalise_header(obj, path)
                for k in keys:
                    if k not in header:
                        header.append(k)
                rows.append((line_no, {k: _text(v, path, line_no, k) for k, v in zip(keys, obj.values())}))
        else:
            reader = csv.reader(f, delimiter="\t" if fmt == "tsv" else ",")
            first = next(reader, None)
            if first is None:
                raise CorpusError(f"{path} is empty: expected a header line with at least {list(REQUIRED_COLUMNS)}")
            header = _normalise_header(first, path)
            for fields in reader:
                line_no = reader.line_num
                if not any(v.strip() for v in fields):
                    skipped.append(line_no)  # a blank line, or only separators
                    continue
                if len(fields) > len(header):
                    raise CorpusError(f"{path}:{line_no}: {len(fields)} fields but the header has {len(header)} "
                                      "columns (an unquoted separator inside a value?)")
                rows.append((line_no, {k: v.strip() for k, v in zip(header, fields)}))
    if skipped:
        shown = ", ".join(map(str, skipped[:10])) + (", ..." if len(skipped) > 10 else "")
        warnings.warn(f"{path}: {len(skipped)} blank or all-empty row(s) skipped (line {shown})", CorpusWarning,
                      stacklevel=2)
    return header, rows


def _text(value, path: Path, line_no: int, key: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        raise CorpusError(f"{path}:{line_no}: column {key!r} holds a JSON {type(value).__name__}; expected text "
                          "or a number")
    return str(value).strip()


def _number(text: str, what: str, where: str, problems: list[str]) -> float | None:
    if text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        problems.append(f"{what} {text!r} at {where} is not a finite number")
        return None
    return value


@dataclass
class _Row:
    where: str
    line: int
    path: Path
    label: str
    utt_id: str | None = None
    speaker: str = ""
    session: str = ""
    valence: float | None = None
    split: str | None = None
    start: float | None = None
    end: float | None = None


def _span_problem(row: _Row, check_audio: bool) -> str | None:
    """An audio problem of a row (missing, unreadable, empty file, span past its end), or None."""
    if not check_audio:
        return None
    if not row.path.is_file():
        return f"missing audio file {row.path} (row {row.where})"
    try:
        info = soundfile.info(row.path)
    except (soundfile.LibsndfileError, RuntimeError, TypeError) as e:
        return f"corrupt or unreadable audio file {row.path} (row {row.where}): {e}"
    if info.frames == 0:
        return f"empty audio file {row.path} (zero samples; row {row.where})"
    duration = info.frames / info.samplerate
    tolerance = 1.0 / info.samplerate  # times written with rounding may land a sample past the end
    if row.start is not None and row.start >= duration:
        return f"start {row.start:g} s at {row.where} is at or past the end of {row.path} ({duration:.3f} s)"
    if row.end is not None and row.end > duration + tolerance:
        return f"end {row.end:g} s at {row.where} is past the end of {row.path} ({duration:.3f} s)"
    return None


def _parse_rows(source: Path, header: list[str], rows: list[tuple[int, dict[str, str]]],
                base: Path) -> tuple[list[_Row], list[str]]:
    """Rows with their fields parsed; the label problems found (path, label and times checks)."""
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise CorpusError(f"{source}:1: manifest lacks required column(s) {missing}; found {header} "
                          f"(required: {list(REQUIRED_COLUMNS)}; optional: {list(OPTIONAL_COLUMNS)})")
    if "session" in header and "fold" in header:
        raise CorpusError(f"{source}:1: give a 'session' or a 'fold' column, not both")
    if not rows:
        raise CorpusError(f"{source} has a header but no rows")
    group = "session" if "session" in header else "fold"
    parsed = []
    for line_no, row in rows:
        where = f"{source}:{line_no}"
        text, label = row.get("path", ""), row.get("label", "")
        if not text:
            problems.append(f"empty path at {where}")
            continue
        if not label:
            problems.append(f"empty label for {text} at {where}")
            continue
        path = Path(text).expanduser()
        path = Path(os.path.normpath(path if path.is_absolute() else base / path))  # "../x" read as written
        r = _Row(where, line_no, path, label,
                 row.get("id") or None, row.get("speaker", ""), row.get(group, ""))
        if group in header and not r.session:
            problems.append(f"empty {group} at {where} (the column is present, so every row needs one)")
        if "valence" in header:
            r.valence = _number(row.get("valence", ""), "valence", where, problems)
            if r.valence is None and not row.get("valence", ""):
                problems.append(f"empty valence at {where} (the column is present, so every row needs one)")
        if "split" in header:
            r.split = SPLIT_SPELLINGS.get(row.get("split", "").lower())
            if r.split is None:
                problems.append(f"split {row.get('split', '')!r} at {where} is not train, valid or test")
        r.start = _number(row.get("start", ""), "start", where, problems)
        r.end = _number(row.get("end", ""), "end", where, problems)
        if r.start is not None and r.start < 0:
            problems.append(f"start {r.start:g} s at {where} is negative")
        if r.start is not None and r.end is not None and r.start >= r.end:
            problems.append(f"start {r.start:g} s >= end {r.end:g} s at {where}")
        if r.end is not None and r.end <= 0:
            problems.append(f"end {r.end:g} s at {where} is not positive")
        parsed.append(r)
    return parsed, problems


def _utterance_ids(rows: list[_Row], base: Path) -> list[str]:
    """Each row's id: its id column, else the file stem (+ the span), made unique from the relative path."""
    def span(r: _Row) -> str:
        if r.start is None and r.end is None:
            return ""
        return f"_{r.start or 0:g}-" + ("end" if r.end is None else f"{r.end:g}")

    ids = [r.utt_id or f"{r.path.stem}{span(r)}" for r in rows]
    stems = Counter(i for r, i in zip(rows, ids) if r.utt_id is None)
    for n, r in enumerate(rows):
        if r.utt_id is None and stems[ids[n]] > 1:
            try:
                rel = r.path.relative_to(base)
            except ValueError:
                rel = Path(*r.path.parts[1:])
            ids[n] = "__".join(rel.with_suffix("").parts) + span(r)
    return ids


def _sessions(rows: list[_Row]) -> dict[str, int] | None:
    """Manifest session value -> 1-based session number (integers kept), None without sessions."""
    values = sorted({r.session for r in rows if r.session})
    if not values:
        return None
    try:
        numbers = {v: int(v) for v in values}
        if min(numbers.values()) >= 1 and len(set(numbers.values())) == len(numbers):
            return numbers
    except ValueError:
        pass
    return {v: i for i, v in enumerate(values, 1)}


def build_corpus(source: Path, rows: list[_Row], *, classes=None, label_map=None, strict: bool = False,
                 check_audio: bool = True, columns: tuple[str, ...] = (), base: Path | None = None,
                 problems: list[str] | None = None) -> LabelledCorpus:
    """Apply ``label_map`` and ``classes`` to parsed rows, check duplicates and audio, settle problems."""
    label_problems = list(problems or [])
    mapping = parse_label_map(label_map)
    fixed = parse_classes(classes)
    base = base if base is not None else source.parent
    dropped: Counter = Counter()
    kept: list[_Row] = []
    for r in rows:
        label = mapping.get(r.label, r.label)
        if label is None:
            dropped[r.label] += 1
            continue
        if fixed is not None and label not in fixed:
            hint = "" if r.label == label else f" (mapped from {r.label!r})"
            label_problems.append(f"unknown label {label!r}{hint} at {r.where}; the classes are {list(fixed)} "
                                  f"(rename or drop it with --label-map {r.label}:NEW or {r.label}:-)")
            continue
        r.label = label
        kept.append(r)
    ids = _utterance_ids(kept, base)
    seen_rows: dict[tuple, str] = {}
    seen_ids: dict[str, str] = {}
    for r, utt_id in zip(kept, ids):
        key = (str(r.path.resolve()), r.start, r.end)
        if key in seen_rows:
            label_problems.append(f"duplicate row at {r.where}: {r.path}"
                                  + ("" if r.start is None and r.end is None else f" [{r.start}, {r.end}]")
                                  + f" is already at {seen_rows[key]}")
        elif utt_id in seen_ids:
            label_problems.append(f"duplicate id {utt_id!r} at {r.where} (first at {seen_ids[utt_id]})")
        seen_rows.setdefault(key, r.where)
        seen_ids.setdefault(utt_id, r.where)
    settle(label_problems, strict=True, source=f"labels of {source}")
    audio_problems: list[str] = []
    session_numbers = _sessions(kept)
    utterances = []
    for r, utt_id in zip(kept, ids):
        bad = _span_problem(r, check_audio)
        if bad is not None:
            audio_problems.append(bad)
            continue
        utterances.append(Utterance(utt_id, r.path, r.label, session=session_numbers[r.session] if r.session else 0,
                                    speaker=r.speaker, valence=r.valence, start=r.start, end=r.end, split=r.split))
    settle(audio_problems, strict=strict, source=f"audio of {source}")
    if not utterances:
        raise CorpusError(f"no usable utterances in {source}" + (f" (label map dropped {dict(dropped)})"
                                                                   if dropped else ""))
    names = fixed if fixed is not None else tuple(sorted({u.label for u in utterances}))
    counted = Counter(u.label for u in utterances)
    sessions = None if session_numbers is None else {n: v for v, n in sorted(session_numbers.items(),
                                                                             key=lambda kv: kv[1])}
    return LabelledCorpus(source, utterances, names, {c: counted[c] for c in names}, dict(sorted(dropped.items())),
                          audio_problems, columns, sessions, mapping)


def load_manifest(path: str | os.PathLike, *, classes: str | Iterable[str] | None = None,
                  label_map: str | Mapping[str, str | None] | None = None, strict: bool = False,
                  check_audio: bool = True) -> LabelledCorpus:
    """Read a CSV/TSV/JSON Lines manifest (see the module docstring) as a LabelledCorpus.

    classes: the class set and order ("a,b,c" or a list; default: the labels found, sorted);
    label_map: applied first ("exc:happy,fru:-"); strict: audio problems raise instead of skipping
    the row; check_audio: open every file's header (needed to check spans against the file).
    """
    path = Path(path).expanduser()
    header, rows = read_rows(path)
    parsed, problems = _parse_rows(path, header, rows, path.parent)
    columns = tuple(c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in header)
    return build_corpus(path, parsed, classes=classes, label_map=label_map, strict=strict, check_audio=check_audio,
                        columns=columns, problems=problems)


def write_manifest(utterances: Iterable[Utterance], path: str | os.PathLike, *, relative: bool = True) -> Path:
    """Write ``utterances`` as a manifest (format from the suffix: .csv, .tsv or .jsonl), atomically.

    Columns: id, path (relative to the manifest's folder when ``relative`` and possible), label,
    and speaker, session, valence, start, end, split where any utterance has one. Turns any
    loaded corpus (IEMOCAP, MER2023, synthetic) into a manifest you can edit.
    """
    from .atomic import atomic_path

    path = Path(path).expanduser()
    fmt = manifest_format(path)
    utterances = list(utterances)
    optional = [c for c in ("speaker", "session", "valence", "start", "end", "split")
                if any(getattr(u, c) not in (None, "", 0) for u in utterances)]
    columns = ["id", "path", "label", *optional]

    def where(u: Utterance) -> str:
        p = Path(u.path)
        if relative:
            try:
                return os.path.relpath(p.resolve(), path.parent.resolve())
            except ValueError:  # another drive (Windows)
                pass
        return str(p)

    records = [{"id": u.utt_id, "path": where(u), "label": u.label,
                **{c: getattr(u, c) for c in optional}} for u in utterances]
    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as f:
        if fmt == "jsonl":
            for r in records:
                f.write(json.dumps(r) + "\n")
        else:
            writer = csv.DictWriter(f, columns, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
            writer.writeheader()
            writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in records)
    return path
