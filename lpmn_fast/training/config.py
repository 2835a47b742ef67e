"""Training configuration: one dataclass, filled from defaults, a YAML/JSON file and the CLI.

Fields left at ``None`` take the backbone's defaults in :func:`resolve`: the paper's (section
4.1: Adam, lr 1e-4, batch 128, 50 epochs, K = 1024) for ``hubert``, and faster demo defaults for
``fbank`` (tuned on the synthetic corpus so the three-head comparison runs on a CPU in minutes).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..models.heads import FEATURE_NORMS, HEADS, READINGS, RESTARTS
from ..nn import IMPORTANCES
from ..ops.validation import BACKENDS
from ..protocol.splits import SPLITS
from .logs import LOG_KINDS
from .precision import PRECISIONS

DATASETS = ("synthetic", "iemocap", "mer2023", "manifest", "folder")
BACKBONES = ("fbank", "hf", "hubert")
ENCODER_BACKBONES = ("hf", "hubert")  # pretrained speech encoders (lpmn_fast.models.encoders)
METRICS = ("ua", "wa", "macro_f1", "weighted_f1")
CACHE_DTYPES = ("float32", "bfloat16", "float16")
LR_SCHEDULES = ("constant", "cosine", "linear")

# Backbone-dependent defaults for fields left at None.
PAPER_DEFAULTS = {"lr": 1e-4, "batch_size": 128, "epochs": 50, "num_prototypes": 1024, "tau": 1.0,
                  "quant_weight": 1.0}
FBANK_DEMO_DEFAULTS = {"lr": 2e-3, "batch_size": 32, "epochs": 20, "num_prototypes": 256, "tau": 0.05,
                       "quant_weight": 0.1}
MER2023_PAPER_EPOCHS = 100  # section 4.1: MER2023 as IEMOCAP "except 100 training epochs"
# Dataset-dependent defaults of split and valence_weight (MER2023 has no sessions but has valence).
DATASET_SPLITS = {"synthetic": "loso-speaker", "iemocap": "loso-speaker", "mer2023": "kfold"}
VALENCE_DATASETS = ("mer2023",)
# Your own corpus (lpmn_fast.data.manifest / .folder): classes, label map, splits and valence come from the data.
OWN_DATASETS = ("manifest", "folder")


def _f(default, help: str, factory=None):
    """A field with its --help text; ``factory`` computes a default at construction."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _by_backbone(name: str) -> str:
    return f"hubert/hf (paper) {PAPER_DEFAULTS[name]:g}, fbank (demo) {FBANK_DEMO_DEFAULTS[name]:g}"


def default_cache_dir() -> str:
    return os.environ.get("LPMN_FAST_CACHE", str(Path.home() / ".cache" / "lpmn_fast"))


@dataclass
class TrainConfig:
    # data
    data: str = _f("synthetic", f"corpus: one of {DATASETS}; 'synthetic' is generated on first use")
    data_dir: str | None = _f(None, "corpus root: IEMOCAP_full_release for iemocap (required); for folder, the "
                                    "folder of class sub-folders (required); for mer2023, the "
                                    "folder holding train-label.csv and wav/ (or give --label-csv and --wav-dir); "
                                    "for synthetic, where to generate it (default: "
                                    "CACHE_DIR/synthetic/u<size>-d<difficulty>-seed<seed>)")
    label_csv: str | None = _f(None, "mer2023: the release's train-label.csv (columns name, discrete, valence); "
                                     "default DATA_DIR/train-label.csv")
    wav_dir: str | None = _f(None, "mer2023: folder of 16 kHz mono <name>.wav files extracted from the videos "
                                   "(ffmpeg line in lpmn_fast/data/mer2023.py); default DATA_DIR/wav")
    manifest: str | None = _f(None, "data 'manifest': a CSV, TSV or JSON Lines file with columns path, label and "
                                    "optionally id, speaker, session or fold, valence, split (train/valid/test), "
                                    "start and end (seconds); paths relative to the manifest's folder")
    classes: str | None = _f(None, "manifest/folder: the classes and their order, comma-separated (e.g. "
                                   "angry,happy,neutral,sad); a label outside them is an error (default: the "
                                   "labels found, sorted)")
    label_map: str | None = _f(None, "manifest/folder: rename, merge or drop labels before --classes, e.g. "
                                     "exc:happy,fru:- (OLD:NEW, '-' drops OLD)")
    strict: bool = _f(False, "fail on any corpus problem (missing or corrupt WAV, malformed label, IEMOCAP class "
                             "counts differing from the release's 5531) instead of skipping it with a warning "
                             "that the results record")
    synthetic_utterances_per_speaker: int = _f(100, "synthetic corpus size: utterances per speaker (10 speakers)")
    synthetic_seed: int = _f(0, "seed of the synthetic corpus generator")
    synthetic_difficulty: float = _f(0.5, "synthetic corpus difficulty in [0, 1]: weaker emotional segments and "
                                          "more per-utterance nuisance as it grows")
    split: str | None = _f(None, f"protocol, one of {SPLITS}: 'loso' = the paper's leave-one-session-out "
                                 "(validate and test on the held-out session); 'loso-speaker' = validate on one "
                                 "speaker of the held-out session, test on the other; 'kfold' = stratified, "
                                 "seeded k-fold, validation = a stratified part of the training folds (MER2023, "
                                 "section 4.1); 'speaker-kfold' = k-fold over whole speakers (manifest speaker "
                                 "column); 'column' = a manifest's split column; default loso-speaker for "
                                 "iemocap/synthetic, kfold for mer2023 and folder; for manifest: column if it has a "
                                 "split column, else loso (session or fold column), else speaker-kfold (speaker "
                                 "column), else kfold")
    test_session: int = _f(5, "held-out fold, 1-based: the session for loso/loso-speaker, the fold number for kfold")
    folds: int = _f(5, "kfold: number of folds")
    fold_seed: int = _f(0, "kfold: seed of the random partition (and of the validation part)")
    valid_fraction: float = _f(0.1, "kfold: fraction of the training folds held out for validation (stratified, "
                                    "at least one utterance per class)")
    cache_dir: str = _f(None, "root of the feature and synthetic-corpus caches (default: "
                                             "$LPMN_FAST_CACHE, else ~/.cache/lpmn_fast)", default_cache_dir)
    cache_features: bool = _f(True, "cache the frozen backbone part (fbank, or HuBERT below the first fine-tuned "
                                    "block) on disk once and train from it (exact); off: recompute every step")
    # model
    backbone: str = _f("fbank", f"frame features, one of {BACKBONES}: 'fbank' = Kaldi log-mel + small conv encoder "
                                "(CPU demo), 'hf' = a pretrained HuBERT / wav2vec 2.0 / WavLM / data2vec-audio from "
                                "--hf-model, 'hubert' = pretrained HuBERT from --hubert-path (the paper's set-up)")
    hubert_path: str | None = _f(None, "local directory (or hub name) of a transformers HubertModel, e.g. saved by "
                                        "HubertModel.save_pretrained; needed by --backbone hubert")
    hubert_layers: int = _f(19, "keep the first N transformer blocks (paper: 19 of HuBERT-large's 24)")
    hubert_finetune_layers: list[int] = _f(None, "1-based blocks to fine-tune, the rest frozen "
                                                                 "(paper: 18 19; empty: all frozen)", lambda: [18, 19])
    # pretrained speech encoders (--backbone hf; --layer-weights and --bundle-backbone also for hubert)
    hf_model: str | None = _f(None, "--backbone hf: local directory or Hugging Face Hub id of a transformers speech "
                                    "encoder of the wav2vec 2.0 family (HuBERT, wav2vec 2.0, WavLM, data2vec-audio, "
                                    "base or large), detected from its config.json")
    hf_layers: int | None = _f(None, "--backbone hf: keep the first N transformer blocks (default: all)")
    hf_finetune_layers: list[int] | None = _f(None, "--backbone hf: 1-based blocks to fine-tune, the rest frozen "
                                                    "(default: the last two kept blocks; empty: all frozen)")
    layer_weights: bool = _f(False, "hf/hubert: frame features = a learned softmax-weighted sum of every kept block's "
                                    "output (SUPERB) instead of the last block's; the feature cache then holds every "
                                    "frozen block's output (that many times larger)")
    bundle_backbone: bool = _f(False, "hf/hubert: copy the truncated pretrained encoder into the exported model "
                                      "folders (model/backbone/), so they load without the original checkpoint")
    fbank_mel_bins: int = _f(40, "fbank backbone: mel bins of the Kaldi filterbank (20 ms shift, 25 ms window)")
    encoder_hidden: int = _f(64, "fbank backbone: channels of the conv frame encoder")
    encoder_layers: int = _f(2, "fbank backbone: conv layers of the frame encoder")
    encoder_kernel: int = _f(5, "fbank backbone: conv kernel size (odd, in frames)")
    dropout: float = _f(0.1, "fbank backbone: dropout after each conv layer")
    head: str = _f("lpmn", f"utterance head, one of {HEADS}: 'lpmn' (prototype MIL), 'ap'/'mp' (average/max "
                           "pooling baselines); the CLI also takes a comma list to train each and compare")
    num_prototypes: int | None = _f(None, "K, prototypes of the LPMN codebook; "
                                          f"default {_by_backbone('num_prototypes')}")
    tau: float | None = _f(None, f"softmax temperature over prototypes, eq. (2); default {_by_backbone('tau')}")
    quant_weight: float | None = _f(None, "weight of the quantization loss, eq. (1), added to the cross-entropy; "
                                          f"default {_by_backbone('quant_weight')}")
    feature_norm: str = _f("standard", f"what the LPMN classifier sees of the pooled mappings Y (B, K), one of "
                                       f"{FEATURE_NORMS}: 'none' = Y as the paper writes it (at tau = 1 about 1/K, "
                                       "which barely trains), 'scale' = K x Y, 'log' = log Y, 'standard' = each "
                                       "utterance's Y standardised over its K values, 'batch' = BatchNorm1d without "
                                       "affine (default: standard, chosen by the ablation in docs/choices.md)")
    fisher_momentum: float = _f(0.99, "EMA momentum m of the Fisher importance, eq. (4): the last 1/(1-m) steps "
                                      "carry 63%% of its weight")
    valence_weight: float | None = _f(None, "weight of the valence MSE added to the loss, with a linear valence "
                                            "regressor beside the classifier (corpora with valence only); default "
                                            "1 for mer2023 and manifests with a valence column, 0 (no regressor) "
                                            "otherwise")
    dead_patience: int = _f(100, "restart a prototype from a random training frame after this many steps without "
                                 "being any frame's nearest prototype (0: never)")
    restart: str = _f("codebook", f"how a dead prototype restarts, one of {RESTARTS}: 'codebook' = the frame's "
                                  "direction at the live prototypes' mean norm, its Fisher entries reset to 0; "
                                  "'frame' = the raw frame, Fisher entries kept (before this option)")
    kmeans_frames: int = _f(20000, "frames sampled from the training set for the k-means codebook initialisation")
    top_k: int = _f(60, "K', prototypes kept by Fisher importance for linear probing (section 3.3); must be <= K")
    probe_epochs: int = _f(30, "epochs of linear probing of the fresh classifier on the top-K' prototypes (0: skip)")
    probe_lr: float = _f(1e-2, "learning rate of linear probing")
    probe_reading: str = _f("columns", f"what the probe reads of the K' selected prototypes, one of {READINGS}: "
                                       "'columns' = their K' columns of the full-K pooled vector; 'renormalise' = "
                                       "the softmax re-normalised over the K' kept prototypes (before this option)")
    probe_standardize: bool = _f(True, "standardise each of the probe's K' inputs by its training-set mean and std "
                                       "(folded into the probe classifier's weights afterwards)")
    importance: str = _f("gradient", f"Fisher importance that ranks prototypes for selection, one of {IMPORTANCES}: "
                                     "'gradient' = eq. (4) with gradients w.r.t. p_k (scales with 1/|p_k|^2); "
                                     "'direction' = gradients w.r.t. p_k/|p_k| (independent of |p_k|)")
    kernel: str = _f("auto", f"prototype-MIL op backend, one of {BACKENDS}: fused Triton kernels, PyTorch "
                             "reference, or auto (Triton on CUDA when available)")
    # optimisation
    lr: float | None = _f(None, f"Adam learning rate; default {_by_backbone('lr')}")
    batch_size: int | None = _f(None, f"utterances per batch; default {_by_backbone('batch_size')}")
    epochs: int | None = _f(None, f"training epochs; default {_by_backbone('epochs')} (hubert on mer2023: "
                                  f"{MER2023_PAPER_EPOCHS}, the paper's)")
    weight_decay: float = _f(0.0, "Adam weight decay")
    seed: int = _f(0, "seed of initialisation, batch order and dropout")
    select_metric: str = _f("ua", f"validation metric that picks the best epoch, one of {METRICS}")
    device: str = _f("auto", "torch device ('auto': cuda if available, else cpu)")
    threads: int | None = _f(None, "torch CPU threads; default: torch's choice (one per core); 1 avoids a large "
                                   "slowdown when other jobs share the cores")
    # speed on a GPU: precision, data loading, accumulation, schedule (none changes the demo's results)
    precision: str = _f("auto", f"numeric precision, one of {PRECISIONS}: fp32; tf32 (float32 with TF32 tensor-core "
                                "matmuls, matmul precision 'high'); bf16/fp16 (autocast with float32 master "
                                "weights; fp16 with a gradient scaler kept in checkpoints); auto = bf16 on a GPU "
                                "that supports it, else fp32")
    cache_dtype: str = _f("float32", f"dtype of the frozen-feature cache, one of {CACHE_DTYPES}: 16 bits halve its "
                                     "disk and memory (features are rounded; float32 is exact)")
    deterministic: bool | None = _f(None, "deterministic algorithms (fixed-order Fisher sums in the fused backward, "
                                          "deterministic CPU index_put, cuBLAS restrictions); resumed runs replay "
                                          "bit for bit only with it; default: on on CPU, off on CUDA (speed)")
    workers: int = _f(0, "DataLoader worker processes that read cached features, or decode and resample audio "
                         "when features are not cached (0: in the training process)")
    bucket: bool | None = _f(None, "length-bucketed batches: utterances of similar duration batched together "
                                   "(less padding), batch order shuffled, every utterance once per epoch, "
                                   "deterministic by seed; default: on for hubert, off for the fbank demo (whose "
                                   "results it keeps; bucketing would cut its padding fraction from 0.32 to 0.09)")
    max_seconds: float | None = _f(None, "training only: random crops of at most this many seconds (validation, "
                                         "test and prediction see full utterances); default: no crop")
    grad_accum: int = _f(1, "micro-batches of --batch-size per optimizer step (effective batch = batch_size x "
                            "grad_accum); exactly equivalent to one big batch up to float rounding")
    lr_schedule: str = _f("constant", f"learning-rate schedule after warmup, one of {LR_SCHEDULES} (cosine and "
                                      "linear decay to 0 at the last step)")
    warmup_steps: int = _f(0, "optimizer steps of linear warmup from 0 to the learning rate")
    max_grad_norm: float | None = _f(None, "clip the gradient's global L2 norm to this (default: no clipping)")
    backbone_lr: float | None = _f(None, "learning rate of the trainable backbone part (fine-tuned HuBERT blocks, "
                                         "fbank conv encoder); default: --lr")
    patience: int | None = _f(None, "stop early after this many epochs without a better validation "
                                    "--select-metric (default: never)")
    # run
    run_dir: str | None = _f(None, "output directory; default runs/<date-time>-<data>-<backbone>-<head> (several "
                                    "heads: runs/<date-time>-<data>-<backbone>/<head>)")
    checkpoint_every: int = _f(50, "also checkpoint every N optimizer steps (besides every epoch)")
    resume: bool = _f(False, "continue the interrupted run in run_dir from its last checkpoint")
    stop_after_steps: int | None = _f(None, "stop abruptly after this many optimizer steps in total, as if "
                                            "killed (no extra checkpoint); to test --resume (default: never)")
    progress: bool = _f(True, "show progress bars")
    log: str = _f("csv", "live per-epoch log, written as each epoch ends: 'csv' (RUN_DIR/metrics.csv), "
                         "'tensorboard' (event files under RUN_DIR/tb/; needs the tensorboard package) or 'none'; "
                         "messages and warnings always go to RUN_DIR/train.log too")


# Fields that may differ between an interrupted run and its resumption (where the run and the
# caches lie included: a moved run folder still resumes, and cached features are exact anywhere).
# Worker processes change how batches are read, never what they hold; the live-log backend only
# where the epochs are written (and runs saved before either field existed still resume).
RUN_CONTROL = ("resume", "stop_after_steps", "progress", "device", "threads", "run_dir", "cache_dir",
               "workers", "log")


# What a run saved before these fields existed did, as the values that reproduce it: such a run
# resumes (or is read back) only with these, never silently with another batching or precision.
BEFORE_FIELD = {"precision": ("fp32",), "cache_dtype": ("float32",), "deterministic": (None, True),
                "bucket": (False,), "max_seconds": (None,), "grad_accum": (1,), "lr_schedule": ("constant",),
                "warmup_steps": (0,), "max_grad_norm": (None,), "backbone_lr": (None,), "patience": (None,),
                "feature_norm": ("none",), "restart": ("frame",), "probe_reading": ("renormalise",),
                "probe_standardize": (False,), "importance": ("gradient",)}


def changed_fields(saved: dict, current: dict) -> list[str]:
    """Fields of the ``current`` config dict that differ from a ``saved`` one of the same run (RUN_CONTROL aside).
    A field the saved config lacks (one added to lpmn_fast since) counts as its default, or, for the
    BEFORE_FIELD ones, as any value that reproduces what such a run did."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}

    def differs(k):
        if k not in saved and k in BEFORE_FIELD:
            return current[k] not in BEFORE_FIELD[k]
        return saved.get(k, defaults.get(k)) != current[k]

    return [k for k in current if k not in RUN_CONTROL and differs(k)]


def saved_fields(saved: dict) -> dict:
    """A saved run's config dict with the BEFORE_FIELD fields it lacks set to what such a run did
    (e.g. feature_norm 'none' for a run saved before that option), so it rebuilds as it was trained."""
    return {**{k: v[0] for k, v in BEFORE_FIELD.items() if k not in saved and v[0] is not None}, **saved}


def default_run_root(data: str, backbone: str) -> Path:
    """``runs/<date-time>-<data>-<backbone>``: where a run (suffixed ``-<head>``) or a comparison goes by default."""
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{data}-{backbone}"


def resolve(config: TrainConfig) -> TrainConfig:
    """Fill backbone-dependent defaults and check every field; raise ValueError naming a bad one."""
    c = dataclasses.replace(config)
    defaults = PAPER_DEFAULTS if c.backbone in ENCODER_BACKBONES else FBANK_DEMO_DEFAULTS
    if c.backbone in ENCODER_BACKBONES and c.data == "mer2023":
        defaults = {**defaults, "epochs": MER2023_PAPER_EPOCHS}
    for name, value in defaults.items():
        if getattr(c, name) is None:
            setattr(c, name, value)
    columns = own_columns(c)
    if c.split is None:
        c.split = DATASET_SPLITS.get(c.data, "loso-speaker") if columns is None else own_split(columns)
    if c.valence_weight is None:
        c.valence_weight = 1.0 if c.data in VALENCE_DATASETS or "valence" in (columns or ()) else 0.0
    if c.bucket is None:
        c.bucket = c.backbone == "hubert"
    if c.resume and c.run_dir is None:
        raise ValueError("resume needs run_dir (--run-dir): the directory of the run to continue")
    if c.run_dir is None:
        c.run_dir = f"{default_run_root(c.data, c.backbone)}-{c.head}"
    _check(c)
    return c


def _check(c: TrainConfig) -> None:
    def need(ok: bool, message: str):
        if not ok:
            raise ValueError(message)

    need(c.data in DATASETS, f"unknown data {c.data!r}; choose one of {DATASETS}")
    need(c.data != "iemocap" or c.data_dir is not None, "data 'iemocap' needs data_dir (--data-dir), the "
                                                         "IEMOCAP_full_release directory")
    need(c.data != "mer2023" or c.data_dir is not None or (c.label_csv is not None and c.wav_dir is not None),
         "data 'mer2023' needs data_dir (--data-dir, holding train-label.csv and wav/) or both label_csv "
         "(--label-csv) and wav_dir (--wav-dir)")
    need(c.data == "mer2023" or (c.label_csv is None and c.wav_dir is None),
         f"label_csv and wav_dir are mer2023's; data {c.data!r} reads data_dir")
    need(c.data != "mer2023" or c.split == "kfold",
         f"split {c.split!r} needs sessions, which MER2023 lacks; use split 'kfold'")
    need(c.valence_weight >= 0, f"valence_weight must be >= 0, got {c.valence_weight}")
    _check_own(c, need)
    need(c.data in VALENCE_DATASETS or c.valence_weight == 0 or "valence" in (own_columns(c) or ()),
         f"data {c.data!r} has no valence labels; valence_weight must be 0 (only {VALENCE_DATASETS} and manifests "
         "with a valence column have valence)")
    need(c.split != "kfold" or (c.folds >= 2 and 1 <= c.test_session <= c.folds),
         f"kfold needs folds >= 2 and test_session (the fold) in [1, folds]; got folds {c.folds}, "
         f"test_session {c.test_session}")
    need(0 < c.valid_fraction < 1, f"valid_fraction must be in (0, 1), got {c.valid_fraction}")
    need(c.backbone in BACKBONES, f"unknown backbone {c.backbone!r}; choose one of {BACKBONES}")
    need(c.head in HEADS, f"unknown head {c.head!r}; choose one of {HEADS}")
    need(c.split in SPLITS, f"unknown split {c.split!r}; choose one of {SPLITS}")
    need(c.kernel in BACKENDS, f"unknown kernel {c.kernel!r}; choose one of {BACKENDS}")
    need(c.select_metric in METRICS, f"unknown select_metric {c.select_metric!r}; choose one of {METRICS}")
    need(c.backbone != "hubert" or c.hubert_path, "backbone 'hubert' needs hubert_path (--hubert-path)")
    need(c.backbone != "hf" or c.hf_model, "backbone 'hf' needs hf_model (--hf-model), a local directory or Hub id")
    need(c.backbone in ENCODER_BACKBONES or not (c.layer_weights or c.bundle_backbone),
         f"layer_weights and bundle_backbone apply to pretrained encoders ({ENCODER_BACKBONES}), not {c.backbone!r}")
    need(c.num_prototypes >= 1, f"num_prototypes (K) must be >= 1, got {c.num_prototypes}")
    need(1 <= c.top_k <= c.num_prototypes,
         f"top_k (K' = {c.top_k}) must be in [1, num_prototypes K = {c.num_prototypes}]")
    need(c.tau > 0, f"tau must be > 0, got {c.tau}")
    need(c.feature_norm in FEATURE_NORMS, f"unknown feature_norm {c.feature_norm!r}; choose one of {FEATURE_NORMS}")
    need(c.restart in RESTARTS, f"unknown restart {c.restart!r}; choose one of {RESTARTS}")
    need(c.probe_reading in READINGS, f"unknown probe_reading {c.probe_reading!r}; choose one of {READINGS}")
    need(c.importance in IMPORTANCES, f"unknown importance {c.importance!r}; choose one of {IMPORTANCES}")
    need(c.lr > 0 and c.batch_size >= 1 and c.epochs >= 1,
         f"need lr > 0, batch_size >= 1, epochs >= 1; got {c.lr}, {c.batch_size}, {c.epochs}")
    need(c.quant_weight >= 0, f"quant_weight must be >= 0, got {c.quant_weight}")
    need(c.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {c.checkpoint_every}")
    need(c.dead_patience >= 0 and c.probe_epochs >= 0, "dead_patience and probe_epochs must be >= 0")
    need(c.synthetic_utterances_per_speaker >= 1, "synthetic_utterances_per_speaker must be >= 1")
    need(0 <= c.synthetic_difficulty <= 1, f"synthetic_difficulty must be in [0, 1], got {c.synthetic_difficulty}")
    need(c.threads is None or c.threads >= 1, f"threads must be >= 1, got {c.threads}")
    need(c.stop_after_steps is None or c.stop_after_steps >= 1, "stop_after_steps must be >= 1")
    need(c.log in LOG_KINDS, f"unknown log {c.log!r}; choose one of {LOG_KINDS}")
    _check_fast_path(c, need)


def own_columns(c: TrainConfig) -> tuple[str, ...] | None:
    """The recognised columns of your own corpus (a manifest's header; a class folder has path and
    label), None for the built-in corpora or while the manifest is not given."""
    if c.data == "folder":
        return ("path", "label")
    if c.data != "manifest" or c.manifest is None:
        return None
    from ..data.manifest import manifest_columns

    return manifest_columns(c.manifest)


def own_split(columns: tuple[str, ...]) -> str:
    """The default protocol of your own corpus, from the columns it has."""
    if "split" in columns:
        return "column"
    if "session" in columns or "fold" in columns:
        return "loso"
    return "speaker-kfold" if "speaker" in columns else "kfold"


def _check_own(c: TrainConfig, need) -> None:
    """The rules of the manifest and folder data sources (and of their fields elsewhere)."""
    from ..data.manifest import parse_classes, parse_label_map

    need(c.data != "manifest" or c.manifest is not None, "data 'manifest' needs manifest (--manifest FILE: CSV, TSV "
                                                          "or JSON Lines with path and label columns)")
    need(c.data != "folder" or c.data_dir is not None, "data 'folder' needs data_dir (--data-dir DIR with one "
                                                        "sub-folder of audio files per class)")
    need(c.data == "manifest" or c.manifest is None,
         f"manifest is read by data 'manifest' only; data {c.data!r} ignores it")
    need(c.data in OWN_DATASETS or (c.classes is None and c.label_map is None),
         f"classes and label_map apply to data 'manifest' and 'folder'; data {c.data!r} has fixed classes")
    parse_classes(c.classes)  # ValueError naming a bad list
    parse_label_map(c.label_map)
    columns = own_columns(c) or ()
    need(c.split != "column" or "split" in columns, "split 'column' needs a manifest with a split column")
    need(c.split != "speaker-kfold" or c.data != "manifest" or "speaker" in columns,
         "split 'speaker-kfold' needs a manifest with a speaker column")
    need(c.split not in ("loso", "loso-speaker") or c.data not in OWN_DATASETS
         or "session" in columns or "fold" in columns,
         f"split {c.split!r} needs sessions: a manifest with a session (or fold) column; use kfold or speaker-kfold")
    need(c.split != "speaker-kfold" or (c.folds >= 2 and 1 <= c.test_session <= c.folds),
         f"speaker-kfold needs folds >= 2 and test_session (the fold) in [1, folds]; got folds {c.folds}, "
         f"test_session {c.test_session}")


def _check_fast_path(c: TrainConfig, need) -> None:
    need(c.precision in PRECISIONS, f"unknown precision {c.precision!r}; choose one of {PRECISIONS}")
    need(c.cache_dtype in CACHE_DTYPES, f"unknown cache_dtype {c.cache_dtype!r}; choose one of {CACHE_DTYPES}")
    need(c.lr_schedule in LR_SCHEDULES, f"unknown lr_schedule {c.lr_schedule!r}; choose one of {LR_SCHEDULES}")
    need(c.workers >= 0, f"workers must be >= 0, got {c.workers}")
    need(c.grad_accum >= 1, f"grad_accum must be >= 1, got {c.grad_accum}")
    need(c.warmup_steps >= 0, f"warmup_steps must be >= 0, got {c.warmup_steps}")
    need(c.max_seconds is None or c.max_seconds > 0, f"max_seconds must be > 0, got {c.max_seconds}")
    need(c.max_grad_norm is None or c.max_grad_norm > 0, f"max_grad_norm must be > 0, got {c.max_grad_norm}")
    need(c.backbone_lr is None or c.backbone_lr > 0, f"backbone_lr must be > 0, got {c.backbone_lr}")
    need(c.patience is None or c.patience >= 1, f"patience must be >= 1 epoch, got {c.patience}")


def config_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)


def load_config_file(path: str | os.PathLike) -> dict:
    """A YAML or JSON mapping of TrainConfig fields (unknown keys are an error)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config file {path}; known fields: {sorted(known)}")
    return data


def make_config(**fields) -> TrainConfig:
    """TrainConfig from keyword fields, with a clear error for an unknown one."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
    return TrainConfig(**fields)
