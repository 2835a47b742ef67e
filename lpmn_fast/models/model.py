"""The SER model: backbone (trainable part) + utterance head."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import torch
from huggingface_hub import ModelHubMixin
from torch import nn

# State of the frozen pretrained bottom of a HuBERT backbone: never saved, reloaded from its path.
FROZEN_PREFIX = "backbone.frozen."


class ModelOutput(NamedTuple):
    """logits (B, classes); aux_loss scalar (quantization loss for LPMN, else 0); nearest (B, T)
    prototype per frame or None; frames (B, T, C) the backbone's frame features; valence (B,)
    regressed valence, None for heads without a valence regressor."""

    logits: torch.Tensor
    aux_loss: torch.Tensor
    nearest: torch.Tensor | None
    frames: torch.Tensor
    valence: torch.Tensor | None = None


class SERModel(nn.Module, ModelHubMixin, library_name="lpmn_fast", pipeline_tag="audio-classification",
               license="apache-2.0", tags=["speech-emotion-recognition", "lpmn"]):
    """feats (B, T, F) prepared by ``backbone.prepare`` + lengths (B,) -> ModelOutput.

    A Hugging Face Hub model (``huggingface_hub.ModelHubMixin``): ``save_pretrained(folder)``
    writes config.json, model.safetensors and the model card README.md; ``from_pretrained`` loads a
    folder or a Hub id at a revision; ``push_to_hub(repo_id)`` uploads.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def frames(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(B, T, C) backbone frame features."""
        return self.backbone(feats, lengths)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> ModelOutput:
        x = self.frames(feats, lengths)
        h = self.head(x, lengths)
        return ModelOutput(h.logits, h.aux_loss, h.nearest, x, h.valence)

    def persistent_state(self) -> dict[str, torch.Tensor]:
        """The state a checkpoint needs: everything but the frozen pretrained bottom of a HuBERT
        backbone, which is reloaded from its path."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith(FROZEN_PREFIX)}

    def load_persistent_state(self, state: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load tensors saved from :meth:`persistent_state` (not strict); return the keys missing from
        ``state`` other than the frozen bottom's, and the unexpected ones (both empty when it fits)."""
        result = self.load_state_dict(state, strict=False)
        return [k for k in result.missing_keys if not k.startswith(FROZEN_PREFIX)], list(result.unexpected_keys)

    def save_pretrained(self, save_directory: str | os.PathLike, classes: list[str] | None = None,
                        extra: dict | None = None, *, config: dict | None = None, repo_id: str | None = None,
                        push_to_hub: bool = False, model_card_kwargs: dict | None = None, **push_to_hub_kwargs):
        """Write config.json + model.safetensors + README.md (model card) to ``save_directory``
        (see lpmn_fast.models.pretrained); returns the folder, or with ``push_to_hub`` the commit URL.

        classes / extra default to those the model was loaded with (``from_pretrained``), so a
        loaded model saves (and pushes) the same card. config: not supported (lpmn_fast writes
        config.json from the model itself); model_card_kwargs: ``repo_id`` for the card's usage example.
        """
        from .pretrained import save_pretrained

        if config is not None:
            raise ValueError("SERModel.save_pretrained writes config.json from the model itself; pass provenance "
                             "as extra= instead of config=")
        if extra is None:
            extra = (getattr(self, "pretrained_config", None) or {}).get("extra")
        card_repo = (model_card_kwargs or {}).get("repo_id", repo_id)
        directory = save_pretrained(self, save_directory, classes, extra, repo_id=card_repo)
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, model_card_kwargs=model_card_kwargs,
                                    **push_to_hub_kwargs)
        return directory

    def _save_pretrained(self, save_directory: Path) -> None:
        """The mixin's hook: weights and config (the card is written by :meth:`save_pretrained`, or
        by the mixin's own ``save_pretrained`` through :meth:`generate_model_card`)."""
        from .pretrained import save_pretrained

        save_pretrained(self, save_directory, extra=(getattr(self, "pretrained_config", None) or {}).get("extra"),
                        card=False)

    def push_to_hub(self, repo_id: str, *, model_card_kwargs: dict | None = None, **kwargs) -> str:
        """Upload the model folder (config, weights, card) to Hub repository ``repo_id``; ``kwargs``
        as ``huggingface_hub.ModelHubMixin.push_to_hub`` (private, token, branch, create_pr, ...)."""
        return super().push_to_hub(repo_id, model_card_kwargs={"repo_id": repo_id, **(model_card_kwargs or {})},
                                   **kwargs)

    def generate_model_card(self, *args, repo_id: str | None = None, **kwargs):
        """The ``huggingface_hub.ModelCard`` :meth:`save_pretrained` writes (lpmn_fast.models.card)."""
        from .card import build_card
        from .pretrained import describe_backbone, describe_head

        config = {**(getattr(self, "pretrained_config", None) or {}), "backbone": describe_backbone(self.backbone),
                  "head": describe_head(self.head)}
        config.setdefault("classes", list(getattr(self, "classes", None)
                                          or [f"class_{i}" for i in range(config["head"]["num_classes"])]))
        return build_card(config, repo_id)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, *, revision: str | None = None,
                        cache_dir: str | os.PathLike | None = None, force_download: bool = False,
                        local_files_only: bool = False, token: str | bool | None = None,
                        device: str | torch.device = "cpu", hubert_path: str | None = None,
                        kernel: str | None = None) -> "SERModel":
        """The model in a ``save_pretrained`` folder or Hub repository ``org/name`` at ``revision``
        (from the Hugging Face cache when offline: ``HF_HUB_OFFLINE=1``), in eval mode on ``device``.

        hubert_path: the pretrained HuBERT of a ``hubert`` model if not at its recorded path;
        kernel: override the prototype-MIL backend. The model gets ``classes`` and
        ``pretrained_config``.
        """
        from .encoders import is_local
        from .pretrained import from_pretrained, hub_error, hub_errors

        if is_local(pretrained_model_name_or_path):
            # A folder is read directly, with errors naming what is missing in it.
            return from_pretrained(pretrained_model_name_or_path, device=device, hubert_path=hubert_path,
                                   kernel=kernel)
        repo_id = str(pretrained_model_name_or_path)
        try:
            return super().from_pretrained(repo_id, revision=revision, cache_dir=cache_dir,
                                           force_download=force_download, local_files_only=local_files_only,
                                           token=token, device=device, hubert_path=hubert_path, kernel=kernel)
        except hub_errors() as error:  # the mixin's own config.json download
            raise hub_error(repo_id, revision, cache_dir, local_files_only, error) from error

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, device="cpu", hubert_path=None, kernel=None,
                         **config_entries) -> "SERModel":
        """The mixin's hook: resolve the Hub repository to a local snapshot folder and load it.

        config_entries: the mixin passes config.json entries named like ``__init__``'s arguments
        (``backbone``, ``head``: their descriptions); the folder's config.json is read again instead.
        """
        from .pretrained import download, from_pretrained

        folder = download(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                          local_files_only=local_files_only, token=token)
        return from_pretrained(folder, device=device, hubert_path=hubert_path, kernel=kernel)
