"""A head-only training step on cached backbone features: fused (triton) vs eager (torch) kernels.

PrototypeMIL + linear classifier; cross-entropy + quantization loss (eq. 1), backward, Fisher
update (eq. 4) and an Adam step, as a training loop over pre-extracted HuBERT features does them.
The features are frozen (no gradient), so the op's useful work is 2 similarity passes (forward, dp).
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from lpmn_fast import PrototypeMIL

from .cases import DTYPES, utterance_lengths
from .common import TAU, input_copies, run_case, sync

NUM_CLASSES = 4  # IEMOCAP's 4-class protocol


def test_train_step(benchmark, bench_env, train_case):
    env, case = bench_env, train_case
    device = env.device
    env.admit(case)

    torch.manual_seed(case.seed)
    layer = PrototypeMIL(case.K, case.C, tau=TAU, kernel="triton" if case.provider == "triton" else "torch").to(device)
    classifier = nn.Linear(case.K, NUM_CLASSES).to(device)
    optimizer = torch.optim.Adam([*layer.parameters(), *classifier.parameters()], lr=1e-4)  # the paper's lr

    g = torch.Generator(device=device).manual_seed(case.seed)
    dtype = DTYPES[case.dtype]
    features = [torch.randn(case.B, case.T, case.C, generator=g, device=device, dtype=dtype)
                for _ in range(input_copies(case, device))]
    ring = itertools.cycle(features)
    lengths = utterance_lengths(case.B, case.T, case.seed).to(device)
    labels = torch.randint(0, NUM_CLASSES, (case.B,), generator=g, device=device)

    def setup():
        return (next(ring),), {}

    def target(x):
        out = layer(x, lengths)
        loss = F.cross_entropy(classifier(out.pooled.float()), labels) \
            + layer.quantization_loss(x, lengths, out.nearest)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        layer.update_fisher()
        optimizer.step()
        sync(device)
        return loss.detach()

    run_case(benchmark, env, case, setup, target, valid_fraction=float(lengths.sum()) / (case.B * case.T))


# ---- full training step: trainable backbone part + LPMN head, as lpmn-train runs it --------------

HUBERT_BLOCKS = 2  # the paper fine-tunes blocks 18-19 of 19: two blocks on the cached frozen features


def _hubert_dir(root, hidden: int) -> str:
    """A random HuBERT with ``HUBERT_BLOCKS`` blocks of width ``hidden`` (HuBERT-large's head count
    and 4x MLP at hidden 1024), saved once; all its blocks are fine-tuned."""
    from transformers import HubertConfig, HubertModel

    path = root / f"hubert-{hidden}"
    if not (path / "config.json").is_file():
        heads = 16 if hidden >= 1024 else 2
        config = HubertConfig(hidden_size=hidden, num_hidden_layers=HUBERT_BLOCKS, num_attention_heads=heads,
                              intermediate_size=4 * hidden, conv_dim=(16, 16), conv_stride=(5, 64),
                              conv_kernel=(10, 64), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
                              do_stable_layer_norm=hidden >= 1024, feat_extract_norm="layer" if hidden >= 1024
                              else "group")
        torch.manual_seed(0)
        HubertModel(config).save_pretrained(path)
    return str(path)


def test_model_step(benchmark, bench_env, model_step_case, tmp_path_factory):
    """One optimizer step of SERModel (fbank conv encoder or HuBERT blocks + LPMN head) on a padded
    batch of cached frozen features, under the case's --precision: forward, losses, backward,
    Fisher update, Adam (with fp16's gradient scaler)."""
    from lpmn_fast.training import make_config, resolve, train_step
    from lpmn_fast.training.batching import Batch
    from lpmn_fast.training.build import build_model, build_optimizer
    from lpmn_fast.training.precision import Precision

    env, case = bench_env, model_step_case
    device = env.device
    env.admit(case)
    try:
        precision = Precision.create(case.mode, device)
    except ValueError as error:
        env.skip(case, str(error))
    backbone = case.kind.removeprefix("step-")
    kernel = "triton" if case.provider == "triton" else "torch"
    fields = dict(head="lpmn", kernel=kernel, num_prototypes=case.K, top_k=1, run_dir="unused", progress=False)
    if backbone == "fbank":
        fields.update(backbone="fbank", encoder_hidden=case.C)
    else:
        fields.update(backbone="hubert", hubert_path=_hubert_dir(tmp_path_factory.getbasetemp(), case.C),
                      hubert_layers=HUBERT_BLOCKS, hubert_finetune_layers=list(range(1, HUBERT_BLOCKS + 1)))
    c = resolve(make_config(**fields))
    torch.manual_seed(case.seed)
    model = build_model(c, NUM_CLASSES).to(device)
    optimizer = build_optimizer(c, model)
    scaler = precision.grad_scaler()
    frozen_dim = c.fbank_mel_bins if backbone == "fbank" else case.C  # what the cache holds per frame
    g = torch.Generator(device=device).manual_seed(case.seed)
    lengths = utterance_lengths(case.B, case.T, case.seed).to(device)
    feats = torch.randn(case.B, case.T, frozen_dim, generator=g, device=device)
    feats = feats * (torch.arange(case.T, device=device) < lengths[:, None])[..., None]
    labels = torch.randint(0, NUM_CLASSES, (case.B,), generator=g, device=device)
    batch = Batch(feats, lengths, labels, torch.arange(case.B, device=device))

    def setup():
        return (batch,), {}

    def target(b):
        with precision.matmul_settings():
            result = train_step(model, b, optimizer, autocast=precision.autocast, scaler=scaler)
        sync(device)
        return result.loss

    run_case(benchmark, env, case, setup, target, valid_fraction=float(lengths.sum()) / (case.B * case.T),
             precision=precision.name)
