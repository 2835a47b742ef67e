"""``PrototypeMIL``: the LPMN layer owning the prototype codebook and its Fisher importance."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import PrototypeMILOutput, prototype_mil
from ..ops.prototype_mil import resolve_backend
from ..ops.reference import EPS, compute_dtype, frame_mask, prototype_mil_pooled_reference
from ..ops.validation import BACKENDS, validate_inputs


IMPORTANCES = ("gradient", "direction")  # what select_top ranks by (see PrototypeMIL)


class PrototypeMIL(nn.Module):
    """Local prototypical mapping + MIL max-over-time aggregation (paper section 3).

    Owns the codebook ``prototypes`` (K, C) and ``fisher_importance`` (K,), an EMA of each
    prototype's Fisher importance (eq. 4). While training with gradients enabled, ``forward``
    asks the op to accumulate per-frame squared prototype gradients during backward; call
    :meth:`update_fisher` after ``loss.backward()`` to fold them into the EMA.

    The estimate's exact form, per step: F_k = sum over valid frames (b, t) of
    ||dL_b/dp_k||^2, with L_b the utterance's log-likelihood (the per-frame gradient through
    cos(x_bt, p_k) is squared before summing over frames, not the utterance's gradient), divided
    by the number of valid frames. Through the cosine, ||d cos / d p_k||^2 = (1 - cos^2) / |p_k|^2,
    so this ranking also ranks prototype norms. ``fisher_direction`` (K,) is the same EMA of the
    gradient with respect to the prototype's direction p_k / |p_k| (the estimate times |p_k|^2),
    which does not depend on |p_k|. The EMA weighs step s back by (1 - m) m^s: with m = 0.99 the
    last 100 steps carry 63% of the weight, the last 300 95%.

    Args:
        num_prototypes: K, codebook size.
        dim: C, frame feature size.
        tau: softmax temperature over prototypes (paper default 1.0).
        kernel: op backend, "auto" (fused on CUDA), "triton" or "torch".
        fisher_momentum: EMA momentum m in ``F <- m F + (1 - m) F_batch``.
        check_finite: raise on NaN/Inf frames (costs a device sync per call).
    """

    def __init__(
        self,
        num_prototypes: int,
        dim: int,
        tau: float = 1.0,
        kernel: str = "auto",
        fisher_momentum: float = 0.99,
        check_finite: bool = False,
    ) -> None:
        super().__init__()
        if num_prototypes < 1 or dim < 1:
            raise ValueError(f"num_prototypes and dim must be >= 1, got {num_prototypes} and {dim}")
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        if kernel not in BACKENDS:
            raise ValueError(f"kernel must be one of {BACKENDS}, got {kernel!r}")
        if not 0.0 <= fisher_momentum < 1.0:
            raise ValueError(f"fisher_momentum must be in [0, 1), got {fisher_momentum}")
        self.num_prototypes = num_prototypes
        self.dim = dim
        self.tau = float(tau)
        self.kernel = kernel
        self.fisher_momentum = float(fisher_momentum)
        self.check_finite = check_finite
        self.track_fisher = True
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, dim))
        self.register_buffer("fisher_importance", torch.zeros(num_prototypes))
        self.register_buffer("fisher_direction", torch.zeros(num_prototypes))
        self.register_buffer("fisher_updates", torch.zeros((), dtype=torch.int64))
        # Between forward/backward and update_fisher: squared gradients and what they were summed over.
        self.register_buffer("fisher_grad_sq", torch.zeros(num_prototypes), persistent=False)
        self.register_buffer("fisher_utterances", torch.zeros((), dtype=torch.float64), persistent=False)
        self.register_buffer("fisher_frames", torch.zeros((), dtype=torch.float64), persistent=False)

    def _apply(self, fn, recurse=True):
        # .double()/.half() cast every floating buffer; the Fisher statistics stay float32.
        super()._apply(fn, recurse)
        self.fisher_importance = self.fisher_importance.float()
        self.fisher_direction = self.fisher_direction.float()
        self.fisher_grad_sq = self.fisher_grad_sq.float()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Models saved before fisher_direction existed: derive it from the gradient EMA and the
        # saved prototypes' norms (exact when the norms did not change over the EMA's horizon).
        key = prefix + "fisher_direction"
        if key not in state_dict and prefix + "fisher_importance" in state_dict and prefix + "prototypes" in state_dict:
            norms = state_dict[prefix + "prototypes"].float().norm(dim=-1)
            state_dict[key] = state_dict[prefix + "fisher_importance"].float() * norms**2
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"num_prototypes={self.num_prototypes}, dim={self.dim}, tau={self.tau}, kernel={self.kernel!r}"

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> PrototypeMILOutput:
        """x: (B, T, C) frame features; lengths: (B,) valid-frame counts or None.

        Returns ``(pooled (B, K), frame_index (B, K), nearest (B, T))``.
        """
        accumulate = self.training and self.track_fisher and torch.is_grad_enabled()
        x, prototypes, op_context = self._op_inputs(x)
        with op_context:
            out = prototype_mil(
                x,
                prototypes,
                lengths,
                tau=self.tau,
                fisher=self.fisher_grad_sq if accumulate else None,
                backend=self.kernel,
                check_finite=self.check_finite,
            )
        if accumulate:
            self.fisher_utterances += x.shape[0]
            self.fisher_frames += x.shape[0] * x.shape[1] if lengths is None else lengths.sum()
        return out

    def _op_inputs(self, x: torch.Tensor):
        """(x, prototypes, context to run the op in)."""
        autocast = torch.is_autocast_enabled(x.device.type)
        if autocast:
            # Under autocast the op takes x and the prototypes in autocast's 16-bit dtype (its fast
            # path) and computes in float32 itself: autocast is off inside, so that the reference's
            # matmuls are not lowered a second time. The prototype gradient returns in float32.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        prototypes = self.prototypes.to(x.dtype) if self.prototypes.dtype != x.dtype else self.prototypes
        return x, prototypes, torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext()

    @torch.no_grad()
    def pool(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inference: forward's ``(pooled (B, K), frame_index (B, K))`` without ``nearest`` or autograd.
        The fused kernels where forward uses them; else the reference computed in place
        (:func:`lpmn_fast.ops.reference.prototype_mil_pooled_reference`, bit-equal to forward's)."""
        x, prototypes, op_context = self._op_inputs(x)
        if resolve_backend(self.kernel, x.device, x.dtype) != "torch":
            out = self(x, lengths)
            return out.pooled, out.frame_index
        with op_context:
            lengths = validate_inputs(x, prototypes, lengths, self.tau, None, "torch", self.check_finite)
            return prototype_mil_pooled_reference(x, prototypes, lengths, self.tau)

    @torch.no_grad()
    def update_fisher(self, loss_scale: float | None = None) -> torch.Tensor:
        """Fold the squared gradients accumulated since the last call into the Fisher EMA (eq. 4).

        The accumulator holds squared gradients of the backward-ed loss. If that loss weights each
        utterance's log-likelihood by ``loss_scale`` (a batch-mean cross-entropy: 1/B, the default,
        with B the utterances seen since the last call), dividing by ``loss_scale**2`` recovers
        per-utterance log-likelihood gradients; dividing by the number of valid frames gives
        eq. (4)'s 1/(B*T) average. Returns this step's estimate (K,) and resets the accumulator.
        """
        # Tensor arithmetic throughout, no float()/int() of a buffer: this runs every training step
        # and must not wait for the GPU. The empty-accumulator check is a device-side assert.
        torch._assert_async(self.fisher_frames > 0, "no squared gradients accumulated: call update_fisher after "
                            "loss.backward() on a forward made in training mode with gradients enabled")
        if loss_scale is None:
            # the batch-mean default 1/B: divide by (1/B)**2, i.e. multiply by B**2
            scale = self.fisher_utterances.square() / self.fisher_frames
        else:
            if not loss_scale > 0:
                raise ValueError(f"loss_scale must be > 0, got {loss_scale}")
            scale = 1.0 / (loss_scale**2 * self.fisher_frames)
        estimate = self.fisher_grad_sq * scale.to(self.fisher_grad_sq.dtype)
        # the same squared gradients with respect to the direction p / |p|: x |p|^2 (the prototypes
        # are those of this step's forward: update_fisher runs before the optimizer step)
        direction = estimate * self.prototypes.detach().to(estimate.dtype).pow(2).sum(-1)
        first, m = self.fisher_updates == 0, self.fisher_momentum
        self.fisher_importance.copy_(torch.where(first, estimate, self.fisher_importance * m + estimate * (1.0 - m)))
        self.fisher_direction.copy_(torch.where(first, direction, self.fisher_direction * m + direction * (1.0 - m)))
        self.fisher_updates += 1
        self.fisher_grad_sq.zero_()
        self.fisher_utterances.zero_()
        self.fisher_frames.zero_()
        return estimate

    def quantization_loss(
        self,
        x: torch.Tensor,
        lengths: torch.Tensor | None,
        nearest: torch.Tensor,
        commitment: float = 1.0,
    ) -> torch.Tensor:
        """VQ-VAE quantization loss, eq. (1): ||sg(x) - p||^2 + commitment * ||x - sg(p)||^2.

        Distances are squared Euclidean between unit-normalised vectors (2 - 2 cos), the geometry
        in which ``nearest`` (argmax cosine) is the nearest prototype; averaged over valid frames.
        x: (B, T, C); lengths: (B,) or None; nearest: (B, T) from forward (-1 on padding).
        """
        if nearest.shape != x.shape[:2]:
            raise ValueError(f"nearest must have shape (B, T) = {tuple(x.shape[:2])}, got {tuple(nearest.shape)}")
        valid = nearest >= 0
        if lengths is not None:
            # a device-side assert (torch.equal or boolean indexing would wait for the GPU every step)
            torch._assert_async(torch.all(valid == frame_mask(lengths, x.shape[1])),
                                "nearest does not match lengths: pass the nearest returned for these lengths")
        work = compute_dtype(x.dtype)
        # every frame (B, T, C), padding weighted 0: the same mean over valid frames with no
        # data-dependent shape
        weight = valid.to(work)
        frames = F.normalize(x.to(work), dim=-1, eps=EPS)
        assigned = F.normalize(self.prototypes[nearest.clamp_min(0)].to(work), dim=-1, eps=EPS)
        count = weight.sum()
        codebook = ((frames.detach() - assigned).pow(2).sum(-1) * weight).sum() / count
        commit = ((frames - assigned.detach()).pow(2).sum(-1) * weight).sum() / count
        return codebook + commitment * commit

    def select_top(self, k_prime: int, importance: str = "gradient") -> torch.Tensor:
        """Indices (K',) int64 of the K' prototypes with the largest Fisher importance, most important first.

        importance: "gradient" (eq. 4 as written: gradients with respect to p_k, which scale with
        1/|p_k|^2) or "direction" (gradients with respect to p_k / |p_k|, independent of |p_k|)."""
        if importance not in IMPORTANCES:
            raise ValueError(f"importance must be one of {IMPORTANCES}, got {importance!r}")
        if not 1 <= k_prime <= self.num_prototypes:
            raise ValueError(f"k_prime must be in [1, K = {self.num_prototypes}], got {k_prime}")
        if int(self.fisher_updates) == 0:
            raise RuntimeError("no Fisher importance estimated yet: train with update_fisher() before selecting")
        scores = self.fisher_importance if importance == "gradient" else self.fisher_direction
        return torch.topk(scores, k_prime, sorted=True).indices

    def subset(self, indices: torch.Tensor) -> "PrototypeMIL":
        """A new layer holding only the prototypes ``indices`` (e.g. from :meth:`select_top`).

        Its softmax runs over the K' kept prototypes only, so its pooled values are re-normalised
        over K' (larger than the full layer's, towards 1 at small tau): the "renormalise" reading of
        section 3.3. The other reading, the K' columns of the full layer's pooled (B, K), is
        ``ProbeHead(..., reading="columns")``."""
        indices = torch.as_tensor(indices, dtype=torch.int64, device=self.prototypes.device)
        if indices.dim() != 1 or indices.numel() == 0:
            raise ValueError(f"indices must be a non-empty 1-d tensor, got shape {tuple(indices.shape)}")
        if int(indices.min()) < 0 or int(indices.max()) >= self.num_prototypes:
            raise ValueError(f"indices must lie in [0, {self.num_prototypes}), got range "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        layer = PrototypeMIL(
            indices.numel(), self.dim, self.tau, self.kernel, self.fisher_momentum, self.check_finite
        ).to(self.prototypes.device)
        with torch.no_grad():
            layer.prototypes.copy_(self.prototypes[indices])
            layer.fisher_importance.copy_(self.fisher_importance[indices])
            layer.fisher_direction.copy_(self.fisher_direction[indices])
            layer.fisher_updates.copy_(self.fisher_updates)
        return layer
