"""The training fast path (issue 13): precision, bucketing, crops, accumulation, schedule, flags."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from training_fixtures import tiny_config

import lpmn_fast.nn.prototype_mil as mil_module
from lpmn_fast.training import make_config, resolve, train, train_step
from lpmn_fast.training.batching import collate
from lpmn_fast.training.build import build_model, build_optimizer, lr_factor
from lpmn_fast.training.checkpoint import load_checkpoint, read_checkpoint_json
from lpmn_fast.training.precision import Precision, resolve_precision
from lpmn_fast.training.sampler import epoch_batches, padding_fraction

def _config(tmp_path, **fields):
    return tiny_config(tmp_path, **{"probe_epochs": 0, **fields})


def _random_batch(backbone, n: int, seed: int = 0):
    """n utterances of 0.3-1.2 s noise through the frozen fbank part; labels cycle over 4 classes."""
    g = torch.Generator().manual_seed(seed)
    seconds = 0.3 + 0.9 * torch.rand(n, generator=g)
    feats = [backbone.prepare(torch.randn(int(16000 * s), generator=g)) for s in seconds.tolist()]
    return collate(feats, [i % 4 for i in range(n)], list(range(n)))


# ---- precision -------------------------------------------------------------------------------


@pytest.mark.parametrize("kernel", ["torch", "triton"])  # triton: through the interpreter on a CPU
def test_bf16_autocast_calls_the_op_with_bf16_inputs_and_keeps_fp32_master_weights(tmp_path, monkeypatch, kernel):
    seen = []
    real = mil_module.prototype_mil

    def spy(x, prototypes, lengths=None, **kwargs):
        seen.append((x.dtype, prototypes.dtype, None if kwargs.get("fisher") is None else kwargs["fisher"].dtype,
                     torch.is_autocast_enabled("cpu")))
        return real(x, prototypes, lengths, **kwargs)

    monkeypatch.setattr(mil_module, "prototype_mil", spy)
    c = resolve(_config(tmp_path, kernel=kernel))
    torch.manual_seed(0)
    model = build_model(c, 4)
    batch = _random_batch(model.backbone, 6)
    result = train_step(model, batch, build_optimizer(c, model), autocast=Precision.create("bf16", "cpu").autocast)
    # x and prototypes in bf16, the Fisher accumulator float32, autocast off inside the op
    assert seen == [(torch.bfloat16, torch.bfloat16, torch.float32, False)]
    mil = model.head.mil
    assert mil.prototypes.dtype == torch.float32 and mil.prototypes.grad.dtype == torch.float32
    assert mil.fisher_importance.dtype == torch.float32 and bool(torch.isfinite(mil.fisher_importance).all())
    assert int(mil.fisher_updates) == 1 and math.isfinite(result.loss)


def test_pooled_comes_back_in_the_autocast_dtype():
    layer = mil_module.PrototypeMIL(5, 7, tau=0.5, kernel="torch")
    x = torch.randn(2, 9, 7)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x, torch.tensor([9, 4]))
    assert out.pooled.dtype == torch.bfloat16  # as the op documents: pooled in its input's dtype
    reference = layer(x.bfloat16(), torch.tensor([9, 4]))  # the same op on the same rounded inputs
    torch.testing.assert_close(out.pooled, reference.pooled, rtol=0, atol=0)


def test_bf16_training_converges_as_fp32(tmp_path):
    """bf16 autocast on the synthetic corpus (strongest cues, 20 utterances a speaker, demo model)
    tracks fp32: the training loss within 5% of fp32's at every epoch, and test WA within 20
    points (4 of the 20 test utterances: one utterance is 5 points, and rounding differs between
    torch releases: with torch 2.11, CI's floor environment, they were 4 utterances apart)."""
    fields = {"test_session": 5, "synthetic_utterances_per_speaker": 20, "synthetic_difficulty": 0.0, "epochs": 6,
              "batch_size": 16, "probe_epochs": 0, "progress": False, "cache_dir": str(tmp_path / "cache")}
    results = {p: train(make_config(**fields, precision=p, run_dir=str(tmp_path / p))) for p in ("fp32", "bf16")}
    fp32, bf16 = results["fp32"], results["bf16"]
    assert bf16["precision"] == "bf16" and fp32["precision"] == "fp32"
    losses = {p: [h["train_loss"] for h in r["history"]] for p, r in results.items()}
    assert losses["fp32"][-1] < 0.9 * losses["fp32"][0]  # fp32 learns, so the comparison means something
    for a, b in zip(losses["fp32"], losses["bf16"]):
        assert b == pytest.approx(a, rel=0.05)
    assert abs(bf16["test"]["wa"] - fp32["test"]["wa"]) <= 0.20 + 1e-9


def test_precision_resolution_and_settings():
    assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        resolve_precision("fp8", torch.device("cpu"))
    assert Precision.create("fp32", "cpu").grad_scaler() is None
    assert Precision.create("fp16", "cpu").grad_scaler() is not None
    before = torch.get_float32_matmul_precision()
    with Precision.create("tf32", "cpu").matmul_settings():
        assert torch.get_float32_matmul_precision() == "high"  # the fused kernels' tensor-core path
    assert torch.get_float32_matmul_precision() == before


def test_fp16_scaler_state_is_checkpointed_and_resumed_exactly(tmp_path, use_corpus):
    full = train(_config(tmp_path / "a", precision="fp16", kernel="torch"))
    stopped = train(_config(tmp_path / "b", precision="fp16", kernel="torch", stop_after_steps=7))
    assert stopped["interrupted"]
    meta = read_checkpoint_json(tmp_path / "b" / "run" / "checkpoints", "last")
    scaler = meta["scaler"]
    assert scaler["scale"] > 0 and {"growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"} <= set(scaler)
    assert meta["run"]["step"] == 6 and scaler["_growth_tracker"] >= 1  # the scaler has counted steps
    resumed = train(_config(tmp_path / "b", precision="fp16", kernel="torch", resume=True))
    assert resumed["test"] == full["test"] and resumed["steps"] == full["steps"]
    _, a, _, _ = load_checkpoint(tmp_path / "a" / "run" / "checkpoints", "last")
    _, b, _, _ = load_checkpoint(tmp_path / "b" / "run" / "checkpoints", "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    final = read_checkpoint_json(tmp_path / "a" / "run" / "checkpoints", "last")["scaler"]
    assert final == read_checkpoint_json(tmp_path / "b" / "run" / "checkpoints", "last")["scaler"]


# ---- gradient accumulation ----------------------------------------------------------------------


def test_two_micro_batches_of_32_step_like_one_batch_of_64(tmp_path):
    c = resolve(_config(tmp_path, kernel="torch", dropout=0.0, dead_patience=1))  # no dropout: same function
    torch.manual_seed(0)
    one = build_model(c, 4)
    two = build_model(c, 4)
    two.load_state_dict(one.state_dict())
    two.head.idle_steps.copy_(one.head.idle_steps)
    batch = _random_batch(one.backbone, 64, seed=1)
    opt_one, opt_two = build_optimizer(c, one), build_optimizer(c, two)
    for _ in range(2):  # the second step starts from the first's Adam moments and idle record
        a = train_step(one, batch, opt_one)
        b = train_step(two, batch, opt_two, grad_accum=2)
        assert float(b.loss) == pytest.approx(float(a.loss), rel=1e-5) and float(b.ce) == pytest.approx(float(a.ce), rel=1e-5)
    # float32 rounding of two partial sums against one: tolerances of a few ulps of the values
    for (name, p), q in zip(one.named_parameters(), two.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(two.head.mil.fisher_importance, one.head.mil.fisher_importance, rtol=1e-4, atol=0)
    assert torch.equal(two.head.idle_steps, one.head.idle_steps)  # dead-prototype record counts steps, not halves
    # the restart draws from the same valid frames, in batch order
    torch.testing.assert_close(b.frames.reshape(-1, b.frames.shape[-1]),
                               a.frames[torch.arange(a.frames.shape[1]) < a.lengths[:, None]], rtol=1e-5, atol=1e-5)


def test_accumulated_run_equals_one_batch_run(tmp_path, use_corpus):
    """Whole runs: batch 2 x 2 micro-batches and batch 4 x 1 see the same optimizer batches (the
    sampler batches batch_size x grad_accum utterances) and end with the same model."""
    common = dict(kernel="torch", dropout=0.0, epochs=2)
    big = train(_config(tmp_path / "a", batch_size=4, **common))
    accumulated = train(_config(tmp_path / "b", batch_size=2, grad_accum=2, **common))
    assert accumulated["steps"] == big["steps"] == 8
    _, a, _, _ = load_checkpoint(tmp_path / "a" / "run" / "checkpoints", "last")
    _, b, _, _ = load_checkpoint(tmp_path / "b" / "run" / "checkpoints", "last")
    for name in a:
        if a[name].is_floating_point():
            # 8 Adam steps amplify float rounding where a gradient is near 0 (Adam divides by its RMS):
            # atol 1e-4 = 1% of one step at lr 1e-2 (seen: 3e-5 at most)
            torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4, msg=name)
        else:
            assert torch.equal(b[name], a[name]), name
    for x, y in zip(big["history"], accumulated["history"]):
        assert y["train_loss"] == pytest.approx(x["train_loss"], rel=1e-4)
        assert y["padding_fraction"] <= x["padding_fraction"]  # micro-batches pad to their own longest


# ---- batching ------------------------------------------------------------------------------------


def _iemocap_like_frames(seed: int = 0) -> list[int]:
    """5531 durations shaped like IEMOCAP's: lognormal, median 3.5 s, mean ~4.5 s, tail to ~35 s (50 frames/s)."""
    rng = np.random.default_rng(seed)
    sigma = math.sqrt(2 * math.log(4.5 / 3.5))  # mean / median = exp(sigma^2 / 2)
    seconds = np.clip(rng.lognormal(math.log(3.5), sigma, 5531), 0.6, 35.0)
    return [int(s * 50) for s in seconds]


def test_iemocap_shaped_durations_have_those_statistics():
    seconds = np.array(_iemocap_like_frames()) / 50
    assert 4.2 < seconds.mean() < 4.8 and 3.3 < np.median(seconds) < 3.7 and 25 < seconds.max() <= 35


def test_bucketing_cuts_padding_at_least_twofold_at_batch_128():
    sizes = _iemocap_like_frames()

    def padded(bucket: bool, epoch: int) -> tuple[int, float]:
        batches = epoch_batches(sizes, 128, seed=0, epoch=epoch, bucket=bucket)
        frames = [[sizes[item.index] for item in b] for b in batches]
        return sum(len(b) * max(b) - sum(b) for b in frames), padding_fraction(frames)

    for epoch in range(3):
        random_padded, random_fraction = padded(False, epoch)
        bucket_padded, bucket_fraction = padded(True, epoch)
        assert random_padded >= 2 * bucket_padded, (random_padded, bucket_padded)
        assert bucket_fraction < random_fraction


@pytest.mark.parametrize("bucket", [True, False])
def test_every_utterance_once_per_epoch_deterministic_by_seed(bucket):
    sizes = [17, 3, 250, 40, 41, 39, 5, 5, 5, 120, 7]  # 11: the last batch of 4 is smaller
    batches = epoch_batches(sizes, 4, seed=3, epoch=2, bucket=bucket)
    assert sorted(item.index for b in batches for item in b) == list(range(len(sizes)))
    assert sorted(len(b) for b in batches) == [3, 4, 4]
    assert batches == epoch_batches(sizes, 4, seed=3, epoch=2, bucket=bucket)  # a pure function
    others = [epoch_batches(sizes, 4, seed=3, epoch=e, bucket=bucket) for e in range(3, 8)]
    assert any(o != batches for o in others)  # batch order (and composition) change between epochs


def test_crops_are_at_most_max_frames_and_deterministic():
    sizes = [10, 100, 30, 31, 500]
    batches = epoch_batches(sizes, 2, seed=0, epoch=0, max_frames=30)
    items = {item.index: item for b in batches for item in b}
    assert items[0].frames is None and items[2].frames is None  # short enough: whole
    for i in (1, 3, 4):
        assert items[i].frames == 30 and 0 <= items[i].start <= sizes[i] - 30
    assert batches == epoch_batches(sizes, 2, seed=0, epoch=0, max_frames=30)
    starts = {epoch_batches(sizes, 2, seed=0, epoch=e, max_frames=30)[0][0].start for e in range(6)}
    assert len(starts) > 1  # a new window each epoch


def test_crops_apply_to_training_only(tmp_path, use_corpus):
    results = train(_config(tmp_path, max_seconds=0.3, epochs=1))
    assert results["steps"] == 4
    # evaluation sees whole utterances: the valid/test sets are read without crops
    assert results["valid"]["count"] == 4


# ---- optimisation knobs --------------------------------------------------------------------------


def test_lr_schedules():
    assert [lr_factor(s, 10, 0, "constant") for s in range(10)] == [1.0] * 10
    assert [lr_factor(s, 10, 4, "constant") for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    linear = [lr_factor(s, 10, 0, "linear") for s in range(10)]
    cosine = [lr_factor(s, 10, 0, "cosine") for s in range(10)]
    assert linear[0] == cosine[0] == 1.0 and all(a > b for a, b in zip(linear, linear[1:]))
    assert all(a > b for a, b in zip(cosine, cosine[1:])) and cosine[-1] < 0.05
    assert lr_factor(2, 10, 2, "cosine") == 1.0  # decay starts after warmup


def test_backbone_lr_schedule_and_clipping_in_a_run(tmp_path, use_corpus):
    results = train(_config(tmp_path, backbone_lr=1e-3, lr_schedule="linear", warmup_steps=2, max_grad_norm=0.5))
    lrs = [h["lr"] for h in results["history"]]
    assert lrs[1] < lrs[0] <= 1e-2  # the head's lr decays linearly after warmup
    meta = read_checkpoint_json(tmp_path / "run" / "checkpoints", "last")
    groups = meta["optimizer"]["param_groups"]
    assert len(groups) == 2 and groups[0]["lr"] / groups[1]["lr"] == pytest.approx(0.1)  # backbone 1e-3 vs 1e-2


def test_patience_stops_early_and_stays_stopped_on_resume(tmp_path, use_corpus):
    results = train(_config(tmp_path, epochs=8, patience=1, lr=1e-6))  # lr too small to improve for long
    assert results["stopped_early"] and len(results["history"]) < 8
    assert len(results["history"]) == results["best_epoch"] + 1


def test_16_bit_feature_cache_halves_its_size(tmp_path, use_corpus):
    full = train(_config(tmp_path / "a", epochs=1))
    half = train(_config(tmp_path / "b", epochs=1, cache_dtype="bfloat16"))
    assert half["feature_cache"]["bytes"] * 2 == full["feature_cache"]["bytes"] > 0
    assert list((tmp_path / "b" / "cache" / "features").glob("*-bfloat16/*.safetensors"))
    assert math.isfinite(half["history"][-1]["train_loss"])


@pytest.mark.parametrize("fields, match", [
    ({"precision": "fp8"}, "unknown precision 'fp8'"),
    ({"cache_dtype": "int8"}, "unknown cache_dtype 'int8'"),
    ({"grad_accum": 0}, "grad_accum must be >= 1"),
    ({"workers": -1}, "workers must be >= 0"),
    ({"max_seconds": 0.0}, "max_seconds must be > 0"),
    ({"lr_schedule": "step"}, "unknown lr_schedule 'step'"),
    ({"warmup_steps": -1}, "warmup_steps must be >= 0"),
    ({"max_grad_norm": -1.0}, "max_grad_norm must be > 0"),
    ({"backbone_lr": 0.0}, "backbone_lr must be > 0"),
    ({"patience": 0}, "patience must be >= 1"),
])
def test_bad_fast_path_settings_are_named(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        resolve(_config(tmp_path, **fields))


def test_history_records_padding_lr_and_seconds(tmp_path, use_corpus):
    results = train(_config(tmp_path, epochs=1))
    epoch = results["history"][0]
    assert 0 <= epoch["padding_fraction"] < 1 and epoch["lr"] == 1e-2 and epoch["seconds"] >= 0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["history"][0]["padding_fraction"] == epoch["padding_fraction"]


def test_predict_takes_a_precision(tmp_path, use_corpus, capsys):
    from lpmn_fast.predict import main as predict_main

    train(_config(tmp_path, epochs=1, probe_epochs=1))
    wav = str(use_corpus.utterances[0].path)
    outputs = {}
    for precision in ("fp32", "bf16"):
        assert predict_main([str(tmp_path / "run"), wav, "--json", "--precision", precision]) == 0
        outputs[precision] = json.loads(capsys.readouterr().out)[0]
    # bf16 rounds the features to 8 bits of mantissa: probabilities agree to about 1e-2
    for name, p in outputs["fp32"]["probabilities"].items():
        assert outputs["bf16"]["probabilities"][name] == pytest.approx(p, abs=0.05)
    with pytest.raises(SystemExit):
        predict_main([str(tmp_path / "run"), wav, "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


@pytest.mark.parametrize("decode_only", [False, True], ids=["workers-prepare", "workers-decode-only"])
def test_worker_pipeline_gives_the_batches_of_the_cached_features(tmp_path, corpus, monkeypatch, decode_only):
    """On-the-fly features read by 2 worker processes (computing the frozen part, or only decoding
    when it lives on a GPU, simulated here) batch exactly like cached features read in-process."""
    from lpmn_fast.training.features import OnTheFlyFeatures, cache_features
    from lpmn_fast.training.loader import batch_loader, feature_sizes
    from lpmn_fast.training.steps import LabelledSet

    monkeypatch.setattr(OnTheFlyFeatures, "prepare_on_gpu", property(lambda self: decode_only))
    c = resolve(_config(tmp_path))
    backbone = build_model(c, 4).backbone
    utts = corpus.utterances[:10]
    labels = torch.arange(10) % 4
    cached = LabelledSet(cache_features(backbone, utts, tmp_path / "cache", progress=False), labels, ())
    fly = LabelledSet(OnTheFlyFeatures(backbone, utts), labels, ())
    assert feature_sizes(fly.features) == feature_sizes(cached.features)  # header-based sizes are exact at 16 kHz
    batches = epoch_batches(feature_sizes(cached.features), 3, seed=0, epoch=1, max_frames=30)
    expected = list(batch_loader(cached, batches))
    got = list(batch_loader(fly, batches, workers=2))
    assert len(got) == len(expected) == 4
    for a, b in zip(got, expected):
        assert torch.equal(a.index, b.index) and torch.equal(a.lengths, b.lengths)
        torch.testing.assert_close(a.feats, b.feats, rtol=0, atol=0)


def test_a_run_saved_before_the_fast_path_fields_resumes_only_as_it_was_made():
    from lpmn_fast.training.config import changed_fields, config_dict

    current = config_dict(resolve(make_config(run_dir="unused", bucket=True)))
    saved = {k: v for k, v in current.items() if k not in ("precision", "bucket", "grad_accum", "cache_dtype")}
    assert changed_fields(saved, current) == ["precision", "bucket"]  # auto precision, bucketed batches
    demo = config_dict(resolve(make_config(run_dir="unused", precision="fp32")))
    assert demo["bucket"] is False and changed_fields(saved, demo) == []  # the fbank default: random batches
    as_made = {**current, "precision": "fp32", "bucket": False}
    assert changed_fields(saved, as_made) == []


def test_experiment_and_train_take_the_fast_path_flags(capsys):
    from lpmn_fast.experiment import build_parser as experiment_parser
    from lpmn_fast.train import build_parser as train_parser

    for parser in (train_parser(), experiment_parser()):
        text = parser.format_help()
        for flag in ("--precision", "--cache-dtype", "--deterministic", "--workers", "--bucket", "--max-seconds",
                     "--grad-accum", "--lr-schedule", "--warmup-steps", "--max-grad-norm", "--backbone-lr",
                     "--patience"):
            assert flag in text, flag
    args = experiment_parser().parse_args(["--precision", "bf16", "--grad-accum", "2", "--no-bucket"])
    assert (args.precision, args.grad_accum, args.bucket) == ("bf16", 2, False)
