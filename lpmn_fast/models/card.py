"""The model card of a saved model: README.md of the model folder, as the Hugging Face Hub shows it.

Built with ``huggingface_hub.ModelCard`` from the model's config.json alone (architecture,
classes, and the ``extra`` a training run stores: its evaluation, training config and
provenance), so a card regenerated after ``from_pretrained`` (e.g. by ``push_to_hub``) says the
same. The YAML header carries the Hub's metadata: library, tags, metrics, pipeline tag and a
``model-index`` with the test metrics. The confusion matrix image (confusion.png) is written
beside it when the run's test confusion matrix is known.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..data.atomic import write_text_atomic

CARD_NAME = "README.md"
CONFUSION_IMAGE = "confusion.png"
LIBRARY = "lpmn_fast"
PIPELINE_TAG = "audio-classification"
TAGS = ["speech-emotion-recognition", "audio-classification", "lpmn", "prototype-learning",
        "multiple-instance-learning", "model_hub_mixin"]
PAPER = ('Yuxuan Xi, Yan Song, Lirong Dai, Haoyu Song, Ian McLoughlin: "An Effective Local Prototypical Mapping '
         'Network for Speech Emotion Recognition"')
# metric key -> (Hub metric type, how the card names it, Hub metric config)
METRICS = {"wa": ("accuracy", "WA (weighted accuracy)", None),
           "ua": ("recall", "UA (unweighted accuracy, macro recall)", "macro"),
           "macro_f1": ("f1", "F1 (macro)", "macro"),
           "weighted_f1": ("f1", "F1 (weighted)", "weighted"),
           "valence_mse": ("mse", "valence MSE", None)}
DATASET_NAMES = {"iemocap": "IEMOCAP", "mer2023": "MER2023", "synthetic": "lpmn_fast synthetic corpus"}


def run_evaluation(results: dict, probe: dict | None = None) -> dict:
    """What a card reports of a training run (``train()``'s results; ``probe``: the linear probe's,
    for the model-probe/ export): model name, protocol, corpus, best epoch and the valid and test
    metrics (with the test confusion matrix)."""
    source = probe if probe is not None else results
    corpus = results.get("corpus") or {}
    return {"name": source.get("name", results.get("name")), "protocol": results.get("protocol"),
            "corpus": {k: corpus.get(k) for k in ("root", "utterances", "counts", "counts_match")},
            "select_metric": results.get("select_metric"), "best_epoch": source.get("best_epoch"),
            "top_k": source.get("top_k"), "valid": source.get("valid"), "test": source.get("test")}


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _metric_cell(key: str, value) -> str:
    if value is None:
        return "–"
    return f"{value:.4f}" if key == "valence_mse" else f"{_pct(value)} %"


def _describe_backbone(backbone: dict) -> str:
    kind = backbone.get("type", "?")
    if kind == "fbank":
        return (f"Kaldi log-mel filterbank ({backbone.get('num_mel_bins')} bins, 20 ms shift) + a "
                f"{backbone.get('layers')}-layer conv frame encoder ({backbone.get('hidden')} channels), trained "
                "from scratch")
    details = ", ".join(f"{k} {v}" for k, v in backbone.items()
                        if k != "type" and not isinstance(v, (dict, list)) and k != "frozen_fingerprint")
    return f"{kind}" + (f" ({details})" if details else "")


def _describe_head(head: dict, train_config: dict) -> str:
    kind = head.get("type")
    if kind == "lpmn":
        return (f"LPMN: K = {head['num_prototypes']} prototypes, tau = {head['tau']:g}, MIL max-over-time pooling, "
                "linear classifier (trained with cross-entropy + quantization loss)")
    if kind == "probe":
        k = train_config.get("num_prototypes")
        return (f"LPMN with prototype selection: the K' = {head['num_prototypes']} prototypes of largest Fisher "
                f"importance" + (f" out of K = {k}" if k else "") + f" (tau = {head['tau']:g}), with a linearly "
                "probed classifier (paper section 3.3)")
    names = {"ap": "average pooling", "mp": "max pooling"}
    return f"{names.get(kind, kind)} over frames + linear classifier (a baseline of the paper)"


def base_model(backbone: dict) -> str | None:
    """The Hub id of the pretrained encoder a model was built on, for the card's ``base_model``: its
    recorded source when that was a Hub id (a local directory has a recorded ``path``), else None."""
    source = backbone.get("source")
    if backbone.get("type") in (None, "fbank") or not source or backbone.get("path"):
        return None
    return str(source)


def _card_data(config: dict, evaluation: dict | None, name: str) -> ModelCardData:
    train_config = (config.get("extra") or {}).get("train_config") or {}
    data = train_config.get("data")
    results = []
    test = (evaluation or {}).get("test") or {}
    for key, (metric_type, metric_name, metric_config) in METRICS.items():
        if test.get(key) is not None:
            results.append(EvalResult(task_type=PIPELINE_TAG, task_name="Speech emotion recognition",
                                      dataset_type=data or "unknown", dataset_name=DATASET_NAMES.get(data, data or "?"),
                                      dataset_split="test", metric_type=metric_type, metric_name=metric_name,
                                      metric_config=metric_config, metric_value=round(float(test[key]), 6)))
    return ModelCardData(library_name=LIBRARY, pipeline_tag=PIPELINE_TAG, license="apache-2.0",
                         tags=sorted(set(TAGS + [config["head"]["type"], config["backbone"]["type"]])),
                         metrics=sorted({METRICS[k][0] for k in METRICS if test.get(k) is not None}) or None,
                         model_name=name, eval_results=results or None, base_model=base_model(config["backbone"]))


def build_card(config: dict, repo_id: str | None = None, folder: str | Path | None = None) -> ModelCard:
    """The ModelCard of a model described by ``config`` (a config.json dict). repo_id: the Hub id
    the usage example loads; else ``folder``, the model folder as it was named when saved."""
    extra = config.get("extra") or {}
    evaluation = extra.get("evaluation")
    train_config = extra.get("train_config") or {}
    provenance = extra.get("provenance")
    name = extra.get("name") or (evaluation or {}).get("name") or f"lpmn_fast {config['head']['type']} model"
    where = repo_id or (Path(folder).as_posix() if folder is not None else "MODEL_FOLDER")
    lines = [f"# {name}: speech emotion recognition with lpmn_fast", "",
             "A speech emotion recognition model trained with lpmn_fast, which reproduces the Local Prototypical "
             "Mapping Network (LPMN) and runs its core op as fused Triton kernels on GPUs.",
             "", "## Task and classes", "",
             f"One emotion label per utterance (16 kHz mono audio; other rates and channel counts are converted), "
             f"from {len(config['classes'])} classes: " + ", ".join(f"`{c}`" for c in config["classes"]) + ".",
             "", "## Model", "",
             f"* Backbone: {_describe_backbone(config['backbone'])}",
             f"* Head: {_describe_head(config['head'], train_config)}"]
    if config["head"].get("valence_weight"):
        lines.append("* A linear valence regressor beside the classifier.")
    lines += ["", "## Data and protocol", ""]
    if train_config:
        lines.append(f"* Corpus: `{train_config.get('data')}`"
                     + (f", {evaluation['corpus']['utterances']} utterances" if evaluation and evaluation.get("corpus")
                        and evaluation["corpus"].get("utterances") else "")
                     + (f" ({', '.join(f'{k} {v}' for k, v in evaluation['corpus']['counts'].items())})"
                        if evaluation and (evaluation.get("corpus") or {}).get("counts") else ""))
        protocol = (evaluation or {}).get("protocol") or {}
        if protocol:
            lines.append(f"* Protocol: {protocol.get('protocol')}: train {protocol.get('train')}, validation "
                         f"{protocol.get('valid')}, test {protocol.get('test')} utterances "
                         f"(held-out fold {train_config.get('test_session')})")
        lines.append(f"* Training: {train_config.get('epochs')} epochs, Adam lr {train_config.get('lr')}, batch "
                     f"{train_config.get('batch_size')}, seed {train_config.get('seed')}; best epoch "
                     f"{(evaluation or {}).get('best_epoch')} chosen on validation "
                     f"{(evaluation or {}).get('select_metric') or train_config.get('select_metric')}")
    else:
        lines.append("Not recorded (saved outside an lpmn_fast training run).")
    lines += ["", "## Results", ""]
    if evaluation and evaluation.get("test"):
        keys = [k for k in METRICS if evaluation["test"].get(k) is not None]
        lines += ["| split | " + " | ".join(METRICS[k][1] for k in keys) + " |",
                  "|---" * (len(keys) + 1) + "|"]
        for split in ("test", "valid"):
            metrics = evaluation.get(split) or {}
            lines.append(f"| {split} | " + " | ".join(_metric_cell(k, metrics.get(k)) for k in keys) + " |")
        matrix = evaluation["test"].get("confusion_matrix")
        if matrix:
            lines += ["", "Test confusion matrix (rows: true class, columns: predicted):", "",
                      f"![confusion matrix]({CONFUSION_IMAGE})", "",
                      "| true \\ predicted | " + " | ".join(config["classes"]) + " |",
                      "|---" * (len(config["classes"]) + 1) + "|"]
            lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |" for c, row in zip(config["classes"], matrix)]
    else:
        lines.append("No evaluation recorded with this model.")
    cli = ([f"hf download {where} --local-dir model  # the files of this repository",
            "lpmn-predict model speech.wav"] if repo_id else [f"lpmn-predict {where} speech.wav"])
    lines += ["", "## How to use", "", "With lpmn_fast installed (`bash scripts/setup.sh` in its checkout):", "",
              "```bash", *cli, "```", "", "```python", "import lpmn_fast",
              "from lpmn_fast.models import SERModel", "",
              f'model = SERModel.from_pretrained("{where}")  # a Hub id (revision=...) or a local folder',
              f'predictor = lpmn_fast.load("{where}")',
              "p = predictor.predict(\"speech.wav\")  # or predictor.predict(waveform, sample_rate)",
              "print(p.label, p.probabilities)", "```"]
    if config["backbone"].get("type") not in (None, "fbank"):
        lines += ["", "The frozen pretrained backbone layers are not part of this folder; they are loaded from the "
                      "backbone recorded above (pass `hubert_path=` if it lies elsewhere)."]
    if provenance:
        from ..provenance import describe

        lines += ["", "## Provenance", "", describe(provenance) + "."]
    lines += ["", "## Paper", "", PAPER + " (LPMN). lpmn_fast reimplements it; numbers above are this model's own, "
              "not the paper's.", ""]
    body = "\n".join(lines)
    return ModelCard(f"---\n{_card_data(config, evaluation, name).to_yaml()}\n---\n\n{body}")


def write_card(directory: str | Path, config: dict, repo_id: str | None = None) -> Path:
    """README.md (and confusion.png when the test confusion matrix is known) in ``directory``, atomically."""
    directory = Path(directory)
    evaluation = (config.get("extra") or {}).get("evaluation") or {}
    matrix = (evaluation.get("test") or {}).get("confusion_matrix")
    if matrix:
        from ..training.plots import plot_confusion

        plot_confusion({evaluation.get("name") or "test": matrix}, list(config["classes"]), directory / CONFUSION_IMAGE)
    write_text_atomic(directory / CARD_NAME, str(build_card(config, repo_id, directory)))
    return directory / CARD_NAME


__all__ = ["CARD_NAME", "CONFUSION_IMAGE", "build_card", "run_evaluation", "write_card"]
