"""``save_pretrained`` / ``from_pretrained`` for SERModel, in the layout a ``transformers`` user knows.

A model directory holds ``config.json`` (architecture, class names, provenance) and
``model.safetensors`` (every tensor of ``SERModel.persistent_state()``: the trainable backbone
part, the head, the Fisher importance, for a probed LPMN the selected prototype indices and the
probe classifier). The frozen bottom of a pretrained speech encoder (HuBERT, wav2vec 2.0, WavLM,
data2vec-audio) is not in model.safetensors: ``from_pretrained`` reloads it from the encoder
recorded in the config (as the user gave it: a Hub id with the commit it resolved to, or a
path), or from the copy :func:`bundle_backbone` wrote into ``backbone/`` beside it, or from the
``hubert_path`` given, and says clearly what it tried when none is there.

Both files are written atomically, weights first: a crash leaves the previous file under each
name, never a half-written one. The model card (README.md, lpmn_fast.models.card) follows.

``SERModel`` saves and loads through ``huggingface_hub.ModelHubMixin``: ``from_pretrained``
takes this folder or a Hub repository id with a revision (:func:`download` resolves it, from the
local Hugging Face cache when offline) and ``push_to_hub`` uploads the folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.atomic import atomic_path, write_text_atomic
from ..nn import PrototypeMIL
from .backbones import FbankBackbone, HubertBackbone
from .encoders import SHAPE_FIELDS, SpeechEncoderBackbone, is_local
from .heads import LPMNHead, PoolingHead, ProbeHead
from .model import SERModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "lpmn_fast.SERModel"
FORMAT_VERSION = 1
# Where bundle_backbone puts the truncated pretrained encoder, inside a saved model directory.
BUNDLE_DIR = "backbone"


def _valence_weight(head: torch.nn.Module) -> float:
    regressor = getattr(head, "valence", None)
    return float(regressor.loss_weight) if regressor is not None else 0.0


def _hubert_fingerprint(backbone: SpeechEncoderBackbone) -> str:
    """A short hash of the frozen bottom's weights (float64 sums of each tensor: cheap, and
    insensitive to a re-save in another file format)."""
    sums = [f"{k}:{float(v.double().sum()):.6e}" for k, v in sorted(backbone.frozen.state_dict().items())]
    return hashlib.sha1("\n".join(sums).encode()).hexdigest()[:16]


def describe_backbone(backbone: torch.nn.Module) -> dict:
    """The JSON description ``build_backbone_from_description`` rebuilds ``backbone`` from."""
    if isinstance(backbone, FbankBackbone):
        return {"type": "fbank", "num_mel_bins": backbone.num_mel_bins, "hidden": backbone.out_dim,
                "layers": len(backbone.convs), "kernel": int(backbone.convs[0].kernel_size[0]),
                "dropout": float(backbone.dropout.p)}
    if isinstance(backbone, SpeechEncoderBackbone):
        return describe_encoder(backbone)
    raise TypeError(f"save_pretrained does not know backbone {type(backbone).__name__}")


def describe_head(head: torch.nn.Module) -> dict:
    """The JSON description ``build_head_from_description`` rebuilds ``head`` from (weights aside)."""
    common = {"num_classes": head.classifier.out_features, "valence_weight": _valence_weight(head)}
    if isinstance(head, (LPMNHead, ProbeHead)):
        mil = head.mil
        out = {"type": "lpmn" if isinstance(head, LPMNHead) else "probe", "dim": mil.dim,
               "num_prototypes": mil.num_prototypes, "tau": mil.tau, "kernel": mil.kernel,
               "fisher_momentum": mil.fisher_momentum, **common}
        if isinstance(head, LPMNHead):
            out["quant_weight"] = head.quant_weight
            out["feature_norm"] = head.feature_norm
            out["restart"] = head.restart
        else:
            out["reading"] = head.reading
            out["top_k"] = int(head.selected.numel())
        return out
    if isinstance(head, PoolingHead):
        return {"type": head.mode, "dim": head.classifier.in_features, **common}
    raise TypeError(f"save_pretrained does not know head {type(head).__name__}")


def _valence_kwargs(desc: dict) -> dict:
    # Only passed when set, so heads without valence support build as before.
    return {"valence_weight": desc["valence_weight"]} if desc.get("valence_weight") else {}


def build_head_from_description(desc: dict, kernel: str | None = None) -> torch.nn.Module:
    kind, classes = desc["type"], desc["num_classes"]
    if kind == "lpmn":
        return LPMNHead(desc["dim"], classes, desc["num_prototypes"], tau=desc["tau"], kernel=kernel or desc["kernel"],
                        quant_weight=desc["quant_weight"], fisher_momentum=desc["fisher_momentum"],
                        # models saved before these options did what "none" and "frame" do
                        feature_norm=desc.get("feature_norm", "none"), restart=desc.get("restart", "frame"),
                        **_valence_kwargs(desc))
    if kind == "probe":
        mil = PrototypeMIL(desc["num_prototypes"], desc["dim"], tau=desc["tau"], kernel=kernel or desc["kernel"],
                           fisher_momentum=desc["fisher_momentum"])
        # ``selected`` comes with the weights; probes saved before "reading" existed re-normalised
        reading = desc.get("reading", "renormalise")
        selected = torch.zeros(desc.get("top_k", desc["num_prototypes"]), dtype=torch.int64)
        return ProbeHead(mil, classes, selected, reading=reading, **_valence_kwargs(desc))
    if kind in ("ap", "mp"):
        return PoolingHead(desc["dim"], classes, kind, **_valence_kwargs(desc))
    raise ValueError(f"unknown head type {kind!r} in the model config")


def build_backbone_from_description(desc: dict, hubert_path: str | None = None, source: str = "the model",
                                    model_dir: str | os.PathLike | None = None) -> torch.nn.Module:
    """The backbone ``desc`` describes; ``hubert_path`` overrides where a pretrained encoder is loaded
    from, ``model_dir`` is the saved model's directory (where a bundled encoder lies)."""
    if desc["type"] == "fbank":
        return FbankBackbone(desc["num_mel_bins"], desc["hidden"], desc["layers"], desc["kernel"], desc["dropout"])
    if desc["type"] not in ("hubert", "hf"):
        raise ValueError(f"unknown backbone type {desc['type']!r} in the model config")
    return build_encoder_from_description(desc, hubert_path, source, model_dir)


def _jsonable(value):
    return json.loads(json.dumps(value))


def save_pretrained(model: SERModel, directory: str | os.PathLike, classes: list[str] | None = None,
                    extra: dict | None = None, *, card: bool = True, repo_id: str | None = None) -> Path:
    """Write ``model`` to ``directory`` (created): config.json + model.safetensors, and with ``card``
    the model card README.md (+ confusion.png when ``extra`` holds a test evaluation). Returns the directory.

    classes: class names, index = label id (default: ``model.classes`` if set, else class_0, ...).
    extra: JSON-able provenance stored under ``"extra"`` (e.g. the training config, ``top_k``, the
    run's ``evaluation`` and ``provenance``, which the card shows). repo_id: the Hub id the card's
    usage example names. Other files in ``directory`` are left alone.
    """
    directory = Path(directory)
    head = describe_head(model.head)
    classes = list(classes if classes is not None else getattr(model, "classes", None)
                   or [f"class_{i}" for i in range(head["num_classes"])])
    if len(classes) != head["num_classes"]:
        raise ValueError(f"{len(classes)} class names given for a model with {head['num_classes']} classes")
    config = {"model_type": MODEL_TYPE, "format_version": FORMAT_VERSION, "classes": classes,
              # what Hub tooling and the transformers audio-classification pipeline read
              "id2label": {str(i): c for i, c in enumerate(classes)}, "label2id": {c: i for i, c in enumerate(classes)},
              "sample_rate": 16000, "backbone": describe_backbone(model.backbone), "head": head,
              "extra": _jsonable(extra or {})}
    # clone(): safetensors refuses tensors sharing storage, and a probe shares its backbone's.
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.persistent_state().items()}
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "model_type": MODEL_TYPE})
    write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=1))
    if card:
        from .card import write_card

        write_card(directory, config, repo_id)
    return directory


def hub_errors() -> tuple[type[Exception], ...]:
    """The huggingface_hub exceptions that mean "this repository/revision could not be had"."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, HFValidationError, OfflineModeIsEnabled

    return HfHubHTTPError, EntryNotFoundError, HFValidationError, OfflineModeIsEnabled


def hub_error(repo_id: str, revision: str | None, cache_dir, local_files_only: bool, error: Exception
              ) -> FileNotFoundError:
    """A FileNotFoundError that says why Hub model ``repo_id`` could not be loaded."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HFValidationError

    if isinstance(error, HFValidationError):
        return FileNotFoundError(f"model not found: {repo_id!r} is neither a local folder nor a valid Hugging Face "
                                 f"Hub repository id ({error})")
    offline = local_files_only or constants.HF_HUB_OFFLINE
    where = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    return FileNotFoundError(
        f"could not load model {repo_id!r}" + (f" at revision {revision!r}" if revision else "") + ": not a local "
        "folder, and " + (f"offline (HF_HUB_OFFLINE=1 or local_files_only) it is not in the Hugging Face cache {where}"
                          if offline else "the Hugging Face Hub did not provide it")
        + f". Cause: {type(error).__name__}: {error}")


def download(repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
             force_download: bool = False, local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """The local folder of Hub model ``repo_id`` at ``revision`` (branch, tag or commit; default main),
    downloaded into the Hugging Face cache if needed. Offline (``HF_HUB_OFFLINE=1`` or
    ``local_files_only``) it comes from the cache (``HF_HUB_CACHE`` or ``cache_dir``) or fails
    with a FileNotFoundError that says so."""
    from huggingface_hub import constants, snapshot_download

    # Offline means cache only, said explicitly: some huggingface_hub versions (1.x) would still ask
    # the Hub for the file list of a revision given as a commit hash.
    local_files_only = local_files_only or bool(constants.HF_HUB_OFFLINE)
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                   local_files_only=local_files_only, token=token)
    except hub_errors() as error:
        raise hub_error(repo_id, revision, cache_dir, local_files_only, error) from error
    return Path(folder)


def read_config(directory: str | os.PathLike) -> dict:
    """config.json of a saved model, with errors naming what is wrong."""
    path = Path(directory) / CONFIG_NAME
    if not Path(directory).is_dir():
        raise FileNotFoundError(f"model directory not found: {directory}")
    if not path.is_file():
        raise FileNotFoundError(f"no lpmn_fast model in {directory}: {CONFIG_NAME} missing (expected a directory "
                                "written by save_pretrained, e.g. RUN_DIR/model)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    found = config.get("model_type") if isinstance(config, dict) else None
    if found != MODEL_TYPE:
        raise ValueError(f"{path} does not describe an lpmn_fast model (model_type {found!r}, expected "
                         f"{MODEL_TYPE!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {config['format_version']}, newer than this lpmn_fast "
                         f"understands ({FORMAT_VERSION}); upgrade lpmn_fast")
    return config


def from_pretrained(directory: str | os.PathLike, *, device: str | torch.device = "cpu",
                    hubert_path: str | None = None, kernel: str | None = None) -> SERModel:
    """The SERModel saved in ``directory``, in eval mode on ``device``.

    hubert_path: where the pretrained encoder of a ``hubert``/``hf`` model lies, if neither bundled
    nor (any more) where its config records it. kernel: override the prototype-MIL backend
    ("auto", "triton", "torch"). The model gets ``classes`` (list of names) and
    ``pretrained_config`` (the config dict).
    """
    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} missing: the model directory is incomplete")
    model = SERModel(build_backbone_from_description(config["backbone"], hubert_path, f"the model in {directory}",
                                                     directory),
                     build_head_from_description(config["head"], kernel))
    state = load_file(str(weights))
    try:
        missing, unexpected = model.load_persistent_state(state)
    except RuntimeError as error:  # a tensor of another shape than the config says
        raise ValueError(f"{weights} does not fit {Path(directory) / CONFIG_NAME}: {error}") from error
    if missing or unexpected:
        raise ValueError(f"{weights} does not fit {Path(directory) / CONFIG_NAME}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    model.classes = list(config["classes"])
    model.pretrained_config = config
    return model.to(device).eval()


# ---- pretrained speech encoders: what the config records, where the frozen part is reloaded from ----

def describe_encoder(backbone: SpeechEncoderBackbone) -> dict:
    """The record of a pretrained encoder backbone: the encoder as the user gave it (``source``: Hub id
    or path; ``revision``: the Hub commit it resolved to; ``path``: the absolute directory, for local
    ones), the cut, the shapes the trained blocks need and a fingerprint of the frozen weights."""
    provenance = getattr(backbone, "provenance", None) or {}  # a reloaded model keeps its first record
    source = provenance.get("source", backbone.source)
    local = is_local(backbone.source) and Path(backbone.source).expanduser().exists()
    path = provenance.get("path") if provenance else (
        str(Path(backbone.source).expanduser().resolve()) if local else None)
    return {"type": backbone.kind, "family": backbone.family, "source": source,
            "revision": provenance.get("revision", backbone.revision), "path": path,
            "num_layers": backbone.num_layers, "finetune_layers": list(backbone.finetune_layers),
            "layer_weights": backbone.layer_weights is not None,
            "encoder_config": _jsonable({k: getattr(backbone.config, k, None) for k in SHAPE_FIELDS}),
            "frozen_fingerprint": _hubert_fingerprint(backbone)}


def _encoder_candidates(desc: dict, override: str | None, model_dir) -> list[tuple[str, str | None]]:
    """(where, revision) to try, in order: the override; the bundled copy; the recorded absolute path;
    the source as given (a Hub id at its recorded revision, or a relative path)."""
    if override:
        return [(override, None)]
    found = []
    if desc.get("bundled") and model_dir is not None:
        found.append((str(Path(model_dir) / desc["bundled"]), None))
    if desc.get("path"):
        found.append((desc["path"], None))
    if desc.get("source") and desc.get("source") != desc.get("path"):
        found.append((desc["source"], desc.get("revision")))
    return found


def build_encoder_from_description(desc: dict, override: str | None = None, source: str = "the model",
                                   model_dir=None) -> SpeechEncoderBackbone:
    """Rebuild a ``hubert``/``hf`` backbone: its frozen part from the first place in
    :func:`_encoder_candidates` that loads, checked against the recorded shapes and fingerprint."""
    cls = HubertBackbone if desc["type"] == "hubert" else SpeechEncoderBackbone
    errors = []
    for where, revision in _encoder_candidates(desc, override, model_dir):
        try:
            backbone = cls(where, desc["num_layers"], tuple(desc["finetune_layers"]),
                           layer_weights=bool(desc.get("layer_weights")), revision=revision)
            break
        except FileNotFoundError as error:
            errors.append(str(error))
    else:
        recorded = desc.get("source") or desc.get("path")
        raise FileNotFoundError(
            f"{source} uses a pretrained speech encoder whose frozen layers are loaded from the checkpoint it was "
            f"trained with, recorded as {recorded!r}" + (f" at {desc['path']!r}" if desc.get("path") else "")
            + "; that could not be loaded" + (f" from {override!r}" if override else "")
            + ". Pass its local directory as hubert_path= (lpmn-predict --hubert-path DIR), or save the model "
            "with lpmn-train --bundle-backbone. Tried: " + " | ".join(errors))
    where = backbone.source
    found = {k: _jsonable(getattr(backbone.config, k, None)) for k in SHAPE_FIELDS}
    expected = desc.get("encoder_config") or desc.get("hubert_config", {})  # hubert_config: format of older saves
    differ = {k: (found[k], v) for k, v in expected.items() if k in found and found[k] != v}
    if differ:
        raise ValueError(f"the encoder at {where!r} is not the one {source} was trained with: "
                         + ", ".join(f"{k} {a!r} (trained with {b!r})" for k, (a, b) in differ.items()))
    if desc.get("frozen_fingerprint") and _hubert_fingerprint(backbone) != desc["frozen_fingerprint"]:
        warnings.warn(f"the frozen encoder weights at {where!r} differ from those {source} was trained with "
                      "(fingerprint mismatch): its predictions will not be the trained model's", stacklevel=3)
    backbone.provenance = {k: desc.get(k) for k in ("source", "revision", "path") if k in desc}
    return backbone


def bundle_backbone(backbone: torch.nn.Module, directory: str | os.PathLike,
                    copy_from: str | os.PathLike | None = None) -> Path | None:
    """Copy the truncated pretrained encoder (CNN, projection, every kept block) into
    ``directory/backbone/`` with ``save_pretrained`` and record it in ``directory/config.json``, so the
    saved model loads without the original checkpoint. ``copy_from``: a model directory already
    bundled with the same backbone (hard links, no second copy). Returns the folder, or None for a
    backbone with nothing pretrained (fbank). The folder is replaced whole: a crash leaves the old one."""
    if not isinstance(backbone, SpeechEncoderBackbone):
        return None
    import shutil
    import tempfile

    directory = Path(directory)
    config = read_config(directory)
    target = directory / BUNDLE_DIR
    tmp = Path(tempfile.mkdtemp(prefix=f".{BUNDLE_DIR}-", dir=directory))
    try:
        if copy_from is not None and (Path(copy_from) / BUNDLE_DIR / CONFIG_NAME).is_file():
            shutil.rmtree(tmp)
            shutil.copytree(Path(copy_from) / BUNDLE_DIR, tmp, copy_function=_link_or_copy)
        else:
            backbone.hf_model.save_pretrained(tmp)
        old = directory / f".{BUNDLE_DIR}-old"
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    config["backbone"]["bundled"] = BUNDLE_DIR
    write_text_atomic(directory / CONFIG_NAME, json.dumps(config, indent=1))
    return target


def _link_or_copy(src, dst):
    import shutil

    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(src, dst)
    return dst


__all__ = ["BUNDLE_DIR", "CONFIG_NAME", "WEIGHTS_NAME", "build_encoder_from_description", "bundle_backbone",
           "describe_backbone", "describe_encoder", "describe_head", "download", "from_pretrained", "hub_error",
           "hub_errors", "read_config", "save_pretrained"]
