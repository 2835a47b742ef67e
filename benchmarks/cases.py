"""What the benchmark suite measures: shapes, modes, providers, ragged lengths and useful FLOPs.

Pure Python and torch on the CPU (no timing, no device): the suite, the report and the tests share it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

# The paper's working shape: batch 128 (section 4), T = 300 frames (6 s at HuBERT's 20 ms frame
# rate), C = 1024 (HuBERT-large), K = 1024 (LPMN-1024, the best codebook of table 3).
PAPER_SHAPE = (128, 300, 1024, 1024)

MODES = ("forward", "backward", "full")
# Similarity passes (2*B*T*K*C FLOPs each) that each mode must do: forward x @ p^T; backward dx and
# dp; full both. A head-only training step on cached (frozen) features needs forward and dp only.
PASSES = {"forward": 1, "backward": 2, "full": 3, "train_step": 2}

OP_PROVIDERS = ("triton", "eager", "compile", "compile-max-autotune")
TRAIN_PROVIDERS = ("triton", "eager")
# torch.compile mode of each compile provider (None: torch.compile's default).
COMPILE_MODES = {"compile": None, "compile-max-autotune": "max-autotune-no-cudagraphs"}

DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
SHORT_DTYPE = {"bfloat16": "bf16", "float32": "fp32", "float16": "fp16"}

# Ragged lengths: log(length / T) ~ Normal(log 0.6, 0.5^2), clipped to [1, T], the first utterance
# exactly T frames (a padded batch is as long as its longest utterance). At T = 300 (6 s) the median
# is 180 frames = 3.6 s and ~15% of utterances fill the batch: right-skewed like IEMOCAP's utterance
# durations (median about 3.5 s), chosen by hand, not fitted to the corpus. Scaled with T, so every
# point of the T sweep has the same padding share (~40%) and the sweep isolates the cost of T.
LENGTH_MEDIAN_FRACTION = 0.6
LENGTH_LOG_SIGMA = 0.5
LENGTH_DISTRIBUTION = (
    f"log(length/T) ~ N(log {LENGTH_MEDIAN_FRACTION}, {LENGTH_LOG_SIGMA}^2), clipped to [1, T], "
    "first utterance = T; seeded per shape"
)


def utterance_lengths(B: int, T: int, seed: int = 0) -> torch.Tensor:
    """(B,) int64 valid-frame counts in [1, T], drawn like a padded batch of real utterances."""
    g = torch.Generator().manual_seed(seed)
    ratio = torch.exp(torch.randn(B, generator=g, dtype=torch.float64) * LENGTH_LOG_SIGMA
                      + math.log(LENGTH_MEDIAN_FRACTION))
    lengths = (ratio * T).round().clamp(1, T).to(torch.int64)
    lengths[0] = T
    return lengths


def useful_flops(B: int, T: int, C: int, K: int, passes: int) -> int:
    """2*B*T*K*C per similarity pass, over the padded T (padding is work a dense version does)."""
    return 2 * B * T * K * C * passes


@dataclass(frozen=True)
class Case:
    """One benchmark: an op call, a head-only training step, or the reference matmul.

    kind: "op" | "train_step" | "matmul"; mode: an op mode, "train_step", or the matmul precision
    ("default" or "tf32"); sweeps: the tables and plots it belongs to ("paper", "K", "T");
    priority: lower runs first, so that a time budget cuts the least important cases.
    """

    kind: str
    provider: str
    mode: str
    B: int
    T: int
    C: int
    K: int
    dtype: str
    sweeps: tuple[str, ...] = ()
    priority: int = 0
    seed: int = field(default=0, compare=False)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.B, self.T, self.C, self.K)

    @property
    def passes(self) -> int:
        if self.kind in MODEL_STEP_KINDS:
            return MODEL_STEP_PASSES
        return 1 if self.kind == "matmul" else PASSES[self.mode]

    @property
    def flops(self) -> int:
        return useful_flops(self.B, self.T, self.C, self.K, self.passes)

    @property
    def id(self) -> str:
        return (f"{self.kind}-{self.provider}-{self.mode}-{SHORT_DTYPE[self.dtype]}"
                f"-B{self.B}-T{self.T}-C{self.C}-K{self.K}")

    def describe(self) -> dict:
        """The case's fields for the JSON record."""
        return {
            "id": self.id, "kind": self.kind, "provider": self.provider, "mode": self.mode,
            "B": self.B, "T": self.T, "C": self.C, "K": self.K, "dtype": self.dtype,
            "sweeps": list(self.sweeps), "passes": self.passes, "flops": self.flops,
        }


@dataclass(frozen=True)
class Profile:
    """A set of shapes sized for a device and a time budget."""

    name: str
    headline: tuple[int, int, int, int]
    headline_dtypes: tuple[str, ...]
    k_sweep: tuple[int, ...]  # K values at the headline B, T, C
    t_sweep: tuple[int, ...]  # T values at the headline B, C, K
    sweep_dtype: str
    sweep_base: tuple[int, int, int, int] | None = None  # (B, T, C, K) of the sweeps if not the headline
    providers: tuple[str, ...] = ("triton", "eager", "compile")
    # (dtype, mode) pairs measured with the max-autotune compile, at the headline shape only.
    max_autotune: tuple[tuple[str, str], ...] = ()
    train_dtypes: tuple[str, ...] = ()
    rounds: tuple[int, int] = (3, 20)  # min and max timed rounds
    # Full training steps (trainable backbone part + LPMN head): (backbone, B, T, C, K) and precisions.
    model_steps: tuple[tuple[str, int, int, int, int], ...] = ()
    model_step_precisions: tuple[str, ...] = ()
    target_s: float = 1.0  # timed seconds per case aimed at, between those bounds
    torch_threads: int | None = None  # CPU threads for torch (None: torch's default)


PROFILES = {
    # 2 shared CPU cores: small shapes, reference providers only (triton is recorded as skipped).
    "cpu": Profile(
        name="cpu",
        headline=(8, 100, 256, 256),
        headline_dtypes=("float32", "bfloat16"),
        k_sweep=(128, 512, 2048),
        t_sweep=(50, 300, 1500),
        sweep_dtype="float32",
        sweep_base=(4, 100, 128, 128),
        train_dtypes=("float32",),
        model_steps=(("fbank", 8, 100, 64, 256), ("hubert", 8, 100, 32, 64)),
        model_step_precisions=("fp32", "bf16"),
        rounds=(3, 10),
        target_s=0.3,
        # One thread: on the shared 2-core dev machine a busy neighbour stalls every OpenMP barrier of
        # a 2-thread run (seen there: one small full pass 0.9 ms on 1 thread, ~60 ms on 2).
        torch_threads=1,
    ),
    # Everything the issue asks for on a GPU, with no time budget in mind.
    "gpu": Profile(
        name="gpu",
        headline=PAPER_SHAPE,
        headline_dtypes=("bfloat16", "float32"),
        k_sweep=(128, 256, 512, 1024, 2048),
        t_sweep=(50, 150, 300, 750, 1500),
        sweep_dtype="bfloat16",
        max_autotune=tuple((d, m) for d in ("bfloat16", "float32") for m in MODES),
        train_dtypes=("bfloat16", "float32"),
        model_steps=(("fbank", 128, 300, 256, 1024), ("hubert", 128, 300, 1024, 1024)),
        model_step_precisions=("bf16", "tf32", "fp32", "fp16"),
        rounds=(10, 100),
        target_s=1.0,
    ),
    # benchmarks/gpu_run.sh: the paper shape in full, reduced sweeps, max-autotune only if time is left.
    "gpu-quick": Profile(
        name="gpu-quick",
        headline=PAPER_SHAPE,
        headline_dtypes=("bfloat16", "float32"),
        k_sweep=(128, 512, 1024, 2048),
        t_sweep=(50, 300, 1500),
        sweep_dtype="bfloat16",
        max_autotune=(("bfloat16", "full"),),
        train_dtypes=("bfloat16",),
        model_steps=(("hubert", 128, 300, 1024, 1024),),
        model_step_precisions=("bf16", "tf32"),
        rounds=(10, 50),
        target_s=0.5,
    ),
}


def resolve_profile(name: str, cuda_available: bool) -> Profile:
    """``auto`` means ``gpu`` with CUDA, else ``cpu``."""
    if name == "auto":
        name = "gpu" if cuda_available else "cpu"
    if name not in PROFILES:
        raise ValueError(f"unknown benchmark profile {name!r}; choose auto or one of {sorted(PROFILES)}")
    return PROFILES[name]


def _provider_rank(provider: str) -> int:
    # The fused op and eager first: the compile providers cost compile time and are cut first.
    order = ("triton", "eager", "compile", "compile-max-autotune")
    return order.index(provider) if provider in order else len(order)


def op_cases(profile: Profile) -> list[Case]:
    """Op benchmarks of a profile, deduplicated (a shape in several sweeps is measured once), by priority."""
    B, T, C, K = profile.headline
    sB, sT, sC, sK = profile.sweep_base or profile.headline
    by_key: dict[tuple, Case] = {}

    def add(provider, mode, shape, dtype, sweep, priority):
        key = (provider, mode, shape, dtype)
        seed = hash(shape) % 2**31
        old = by_key.get(key)
        sweeps = tuple(sorted(set(old.sweeps) | {sweep})) if old else (sweep,)
        priority = min(priority, old.priority) if old else priority
        by_key[key] = Case("op", provider, mode, *shape, dtype, sweeps, priority, seed)

    mode_rank = {"full": 0, "forward": 1, "backward": 2}
    for d_rank, dtype in enumerate(profile.headline_dtypes):
        for mode in MODES:
            for provider in profile.providers:
                # First dtype's full pass first, then its other modes, then the next dtype.
                add(provider, mode, (B, T, C, K), dtype, "paper",
                    10 + 20 * d_rank + 5 * (mode_rank[mode] > 0) + _provider_rank(provider))
    for provider in profile.providers:
        late = 40 if provider.startswith("compile") else 0
        for k in profile.k_sweep:
            add(provider, "full", (sB, sT, sC, k), profile.sweep_dtype, "K", 60 + late)
        for t in profile.t_sweep:
            add(provider, "full", (sB, t, sC, sK), profile.sweep_dtype, "T", 60 + late)
    for i, (dtype, mode) in enumerate(profile.max_autotune):
        # The first (paper shape, bf16, full in the profiles) before the compile sweeps: it is the
        # strongest compile baseline where the issue sets its targets. The rest come last.
        add("compile-max-autotune", mode, (B, T, C, K), dtype, "paper", 90 if i == 0 else 200 + i)
    return sorted(by_key.values(), key=lambda c: (c.priority, c.id))


def train_cases(profile: Profile) -> list[Case]:
    """Head-only training steps (PrototypeMIL + classifier + Adam on cached features) at the headline shape."""
    B, T, C, K = profile.headline
    return [
        Case("train_step", provider, "train_step", B, T, C, K, dtype, ("train",), 50 + 30 * i + _provider_rank(provider),
             hash((B, T, C, K)) % 2**31)
        for i, dtype in enumerate(profile.train_dtypes)
        for provider in TRAIN_PROVIDERS
    ]


# Full training steps: kind "step-<backbone>", mode = the run's --precision, dtype = its autocast
# dtype (float32 for fp32 and tf32). The trainable backbone part (fbank's conv encoder; HuBERT's
# two fine-tuned blocks on cached frozen features) gets gradients, so the op does 3 passes.
MODEL_STEP_KINDS = ("step-fbank", "step-hubert")
MODEL_STEP_PASSES = 3
PRECISION_DTYPE = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def model_step_cases(profile: Profile) -> list[Case]:
    """Full training steps (backbone + LPMN head, Adam, Fisher) per backbone, precision and kernel."""
    return [
        Case(f"step-{backbone}", provider, precision, B, T, C, K, PRECISION_DTYPE[precision], ("step",),
             120 + 10 * b + 2 * i + _provider_rank(provider), hash((backbone, B, T, C, K)) % 2**31)
        for b, (backbone, B, T, C, K) in enumerate(profile.model_steps)
        for i, precision in enumerate(profile.model_step_precisions)
        for provider in TRAIN_PROVIDERS
    ]


def matmul_cases(profile: Profile, cuda: bool) -> list[Case]:
    """The device's dense matmul rate at the shape of one similarity pass, (B*T, C) @ (C, K), per dtype.

    On CUDA float32 is also measured with TF32 allowed ("tf32"), for information: the fused op,
    like torch.matmul, follows torch.get_float32_matmul_precision(), so its fraction of the matmul
    rate is taken against the "default" row, measured under the same setting.
    """
    B, T, C, K = profile.headline
    cases = [Case("matmul", "torch.matmul", "default", B, T, C, K, d, ("matmul",), 0)
             for d in profile.headline_dtypes]
    if cuda and "float32" in profile.headline_dtypes:
        cases.append(Case("matmul", "torch.matmul", "tf32", B, T, C, K, "float32", ("matmul",), 0))
    return cases
