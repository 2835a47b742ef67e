"""SERModel as a Hugging Face Hub model: folders, a local Hub cache offline, revisions, the model card,
and folders written before the Hub mixin."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, ModelHubMixin, constants
from safetensors.torch import load_file

import lpmn_fast
from lpmn_fast.models import SERModel
from lpmn_fast.models.card import CONFUSION_IMAGE, build_card
from lpmn_fast.models.pretrained import CONFIG_NAME, WEIGHTS_NAME
from lpmn_fast.training import make_config, resolve
from lpmn_fast.training.batching import collate
from lpmn_fast.training.build import build_model

CLASSES = ["neutral", "happy", "angry", "sad"]
SMALL = dict(fbank_mel_bins=16, encoder_hidden=16, num_prototypes=8, top_k=4, tau=0.2)
LEGACY = Path(__file__).parent / "data" / "legacy_model_v1"
COMMITS = ("a" * 40, "b" * 40)  # snapshot names in the fake cache (a commit hash is 40 hex digits)


def _model(seed: int = 0, **fields) -> SERModel:
    torch.manual_seed(seed)
    return build_model(resolve(make_config(**{**SMALL, "run_dir": "unused", **fields})), len(CLASSES)).eval()


def _batch(model, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    feats = [model.backbone.prepare(torch.randn(int(16000 * s), generator=g) * 0.1) for s in (0.31, 0.57, 0.43)]
    return collate(feats, [0, 1, 2], [0, 1, 2])


def _same_predictions(a: SERModel, b: SERModel) -> None:
    batch = _batch(a)
    torch.testing.assert_close(a(batch.feats, batch.lengths).logits, b(batch.feats, batch.lengths).logits,
                               rtol=0, atol=0)


def _cache(root: Path, repo_id: str, folders: dict[str, Path], refs: dict[str, str]) -> Path:
    """A Hugging Face Hub cache as huggingface_hub lays it out: models--org--name/snapshots/<commit>/
    holding each folder's files, refs/<branch> naming a commit."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    for commit, folder in folders.items():
        shutil.copytree(folder, repo / "snapshots" / commit)
    for ref, commit in refs.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return root


@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    """Two saved models of one repository in a local cache: main -> commit b, tag v1 -> commit a;
    the process offline with HF_HUB_CACHE pointing there (env and huggingface_hub's constants, which
    read the env at import)."""
    first, second = _model(seed=0), _model(seed=1)
    first.save_pretrained(tmp_path / "first", CLASSES)
    second.save_pretrained(tmp_path / "second", CLASSES)
    snapshots = {COMMITS[0]: tmp_path / "first", COMMITS[1]: tmp_path / "second"}
    cache = _cache(tmp_path / "hub", "lpmn-org/tiny-ser", snapshots, {"main": COMMITS[1], "v1": COMMITS[0]})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache, first, second


def test_sermodel_is_a_hub_mixin_model(tmp_path, monkeypatch):
    model = _model()
    assert isinstance(model, ModelHubMixin) and callable(model.push_to_hub)
    model.save_pretrained(tmp_path / "saved", CLASSES)
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    loaded = SERModel.from_pretrained(tmp_path / "saved")
    assert loaded.classes == CLASSES and not loaded.training
    _same_predictions(loaded, model)
    # a str path works as well as a Path, and so does a relative one
    assert SERModel.from_pretrained(str(tmp_path / "saved")).classes == CLASSES
    monkeypatch.chdir(tmp_path)
    assert SERModel.from_pretrained("saved").classes == CLASSES


def test_load_by_hub_id_from_the_offline_cache(offline_cache):
    cache, first, second = offline_cache
    main = SERModel.from_pretrained("lpmn-org/tiny-ser")  # refs/main
    _same_predictions(main, second)
    tagged = SERModel.from_pretrained("lpmn-org/tiny-ser", revision="v1")
    _same_predictions(tagged, first)
    pinned = SERModel.from_pretrained("lpmn-org/tiny-ser", revision=COMMITS[0])
    _same_predictions(pinned, first)
    assert main.classes == CLASSES
    predictor = lpmn_fast.load("lpmn-org/tiny-ser", revision="v1")  # what lpmn-predict's Python side does
    _same_predictions(predictor.model, first)
    assert predictor.source == "lpmn-org/tiny-ser"


def test_hub_ids_that_cannot_be_had_offline_are_named(offline_cache):
    with pytest.raises(FileNotFoundError, match=r"'lpmn-org/absent'.*offline.*not in the Hugging Face cache"):
        SERModel.from_pretrained("lpmn-org/absent")
    with pytest.raises(FileNotFoundError, match=r"at revision 'v9'"):
        SERModel.from_pretrained("lpmn-org/tiny-ser", revision="v9")


def test_hub_cache_offline_in_a_fresh_process(tmp_path):
    """What a user does: HF_HUB_OFFLINE=1 and HF_HUB_CACHE set before Python starts."""
    model = _model(seed=3)
    model.save_pretrained(tmp_path / "saved", CLASSES)
    cache = _cache(tmp_path / "hub", "lpmn-org/tiny-ser", {COMMITS[0]: tmp_path / "saved"}, {"main": COMMITS[0]})
    batch = _batch(model)
    torch.save({"feats": batch.feats, "lengths": batch.lengths, "logits": model(batch.feats, batch.lengths).logits},
               tmp_path / "batch.pt")
    script = ("import sys, torch\nfrom lpmn_fast.models import SERModel\n"
              "m = SERModel.from_pretrained('lpmn-org/tiny-ser')\n"
              f"b = torch.load({str(tmp_path / 'batch.pt')!r})\n"
              "assert torch.equal(m(b['feats'], b['lengths']).logits, b['logits'])\nprint(m.classes)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(CLASSES) in done.stdout


def test_folders_written_before_the_hub_mixin_still_load():
    loaded = SERModel.from_pretrained(LEGACY)
    assert loaded.classes == CLASSES and loaded.pretrained_config["format_version"] == 1
    saved = load_file(LEGACY / WEIGHTS_NAME)
    # fisher_direction came later: derived on load from the saved Fisher EMA and prototype norms
    assert set(loaded.persistent_state()) - set(saved) == {"head.mil.fisher_direction"}
    assert all(torch.equal(loaded.persistent_state()[k], v) for k, v in saved.items())
    # the same architecture built from its config fields, with those weights, predicts the same
    # (feature_norm "none": what models saved before that option did)
    rebuilt = build_model(resolve(make_config(fbank_mel_bins=8, encoder_hidden=8, encoder_layers=1, num_prototypes=6,
                                              top_k=3, tau=0.2, feature_norm="none", run_dir="unused")), 4).eval()
    rebuilt.load_persistent_state(saved)
    _same_predictions(loaded, rebuilt)


def test_a_loaded_model_saves_the_same_card_and_extra(tmp_path):
    model = _model()
    extra = {"name": "LPMN-8", "train_config": {"data": "synthetic", "epochs": 2, "num_prototypes": 8},
             "evaluation": {"name": "LPMN-8", "test": {"wa": 0.75, "ua": 0.5, "macro_f1": 0.25, "weighted_f1": 0.125,
                                                       "confusion_matrix": [[1, 0, 0, 0], [0, 1, 0, 0],
                                                                            [0, 0, 1, 0], [1, 0, 0, 0]]}}}
    model.save_pretrained(tmp_path / "a", CLASSES, extra)
    SERModel.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    config = {name: json.loads((tmp_path / name / CONFIG_NAME).read_text()) for name in ("a", "b")}
    assert config["b"] == config["a"]
    card_a = (tmp_path / "a" / "README.md").read_text()  # its usage example names the folder it is in
    assert (tmp_path / "b" / "README.md").read_text() == card_a.replace((tmp_path / "a").as_posix(),
                                                                        (tmp_path / "b").as_posix())
    assert (tmp_path / "b" / CONFUSION_IMAGE).is_file()
    card = ModelCard.load(tmp_path / "b" / "README.md")
    assert card.data.library_name == "lpmn_fast" and card.data.pipeline_tag == "audio-classification"
    values = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert values == {("accuracy", None): 0.75, ("recall", "macro"): 0.5, ("f1", "macro"): 0.25,
                      ("f1", "weighted"): 0.125}
    assert "| test | 75.00 % | 50.00 % | 25.00 % | 12.50 % |" in card.text


def test_push_to_hub_uploads_the_saved_folder(tmp_path, monkeypatch):
    """push_to_hub goes through huggingface_hub's mixin (HfApi faked: no network here)."""
    import huggingface_hub.hub_mixin as hub_mixin

    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, private=None, exist_ok=False):
            return type("Repo", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            uploads.append((repo_id, sorted(p.name for p in Path(folder_path).iterdir()),
                            (Path(folder_path) / "README.md").read_text()))
            return f"https://hub.example/{repo_id}/commit/1"

    monkeypatch.setattr(hub_mixin, "HfApi", FakeApi)
    url = _model().push_to_hub("lpmn-org/tiny-ser")
    assert url.endswith("/commit/1")
    (repo_id, files, card), = uploads
    assert repo_id == "lpmn-org/tiny-ser" and files == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    assert 'SERModel.from_pretrained("lpmn-org/tiny-ser")' in card and "hf download lpmn-org/tiny-ser" in card


def test_card_of_a_model_saved_outside_a_run(tmp_path):
    model = _model(head="ap")
    model.save_pretrained(tmp_path / "ap", CLASSES)
    text = (tmp_path / "ap" / "README.md").read_text()
    assert "No evaluation recorded" in text and "average pooling" in text
    assert not (tmp_path / "ap" / CONFUSION_IMAGE).exists()
    assert "`neutral`, `happy`, `angry`, `sad`" in text
    with pytest.raises(ValueError, match="config.json from the model itself"):
        model.save_pretrained(tmp_path / "ap", config={"a": 1})
    assert "LPMN" in str(build_card(json.loads((LEGACY / CONFIG_NAME).read_text())))
    card = model.generate_model_card(repo_id="lpmn-org/ap")  # the mixin's hook, as save_pretrained writes it
    assert card.data.library_name == "lpmn_fast" and 'from_pretrained("lpmn-org/ap")' in card.text
