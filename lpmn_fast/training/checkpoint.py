"""Atomic checkpoints: tensors in safetensors, everything else in a JSON that names them.

A checkpoint called ``name`` (``last`` or ``best``) is ``<name>.json`` plus the tensor file it
names, ``<name>-step<N>.safetensors``. The tensor file is written first, then the JSON replaces
the old one (temporary file + os.replace), then the old tensor file is removed: at every instant
``<name>.json`` names a complete tensor file, so a crash never loses or mixes a checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.atomic import atomic_path, write_text_atomic

_MODEL, _OPTIM, _RNG = "model/", "optimizer/", "rng/"


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, entries in sd["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{_OPTIM}{pid}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}/{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if name.startswith(_OPTIM):
            pid, key = name[len(_OPTIM):].split("/", 1)
            state.setdefault(int(pid), {})[key] = value
    for name, value in rest["scalars"].items():
        pid, key = name.split("/", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": rest["param_groups"]}


def rng_tensors() -> dict[str, torch.Tensor]:
    out = {f"{_RNG}torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"{_RNG}cuda{i}"] = s
    return out


def restore_rng(tensors: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(tensors[f"{_RNG}torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith(f"{_RNG}cuda"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(directory: str | Path, name: str, model_state: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | None, state: dict, step: int = 0) -> Path:
    """Write checkpoint ``name`` of optimizer step ``step`` atomically; ``state`` (JSON-able: run
    progress, config, ...) goes in the JSON. Returns the JSON's path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"{_MODEL}{k}": v.detach().cpu().contiguous() for k, v in model_state.items()}
    optim_rest = None
    if optimizer is not None:
        optim_tensors, optim_rest = _optimizer_tensors(optimizer)
        tensors.update(optim_tensors)
    tensors.update(rng_tensors())
    tensor_file = f"{name}-step{int(step):08d}.safetensors"
    previous = read_checkpoint_json(directory, name)
    with atomic_path(directory / tensor_file) as tmp:
        save_file(tensors, str(tmp))
    meta = {**state, "tensors": tensor_file, "optimizer": optim_rest}
    write_text_atomic(directory / f"{name}.json", json.dumps(meta, indent=1))
    if previous is not None and previous["tensors"] != tensor_file:
        (directory / previous["tensors"]).unlink(missing_ok=True)
    return directory / f"{name}.json"


def read_checkpoint_json(directory: str | Path, name: str) -> dict | None:
    path = Path(directory) / f"{name}.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def load_checkpoint(directory: str | Path, name: str) -> tuple[dict, dict[str, torch.Tensor], dict | None,
                                                               dict[str, torch.Tensor]]:
    """(state JSON, model tensors, optimizer state dict or None, RNG tensors) of checkpoint ``name``."""
    meta = read_checkpoint_json(directory, name)
    if meta is None:
        raise FileNotFoundError(f"no checkpoint {name!r} in {directory} ({name}.json missing)")
    tensors = load_file(str(Path(directory) / meta["tensors"]))
    model = {k[len(_MODEL):]: v for k, v in tensors.items() if k.startswith(_MODEL)}
    rng = {k: v for k, v in tensors.items() if k.startswith(_RNG)}
    optim = _optimizer_state(tensors, meta["optimizer"]) if meta.get("optimizer") is not None else None
    return meta, model, optim, rng


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a checkpoint's model tensors into a SERModel; only the frozen pretrained HuBERT bottom may be absent."""
    missing, unexpected = model.load_persistent_state(state)
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
