"""Fitting the gate after training (``models.gate``): the scores' fitted parts on the training rows,
the paper's and the validation tau, the reference (validation) and conformal calibration splits; the
per-split metrics under the gate and the checkpoint with its gate file; refitting the gate of an
existing checkpoint without training (``python -m training calibrate``)."""
from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from models.checkpoint import LoadedCheckpoint, load_checkpoint, save_checkpoint, sha256_of
from models.conformal import LEARNED_COMBINATIONS
from models.gate import GATE_FILE, Gate, calibrate_gate, gate_tails
from models.hybrid import HybridModel
from models.manifest import FittedScores, Manifest, ManifestDraft, OutlierSet
from models.scores import LatentNeighbours, ScoreFit
from models.validation import validation_message
from training.config import ConfigError, ExperimentConfig, GateSettings, apply_override
from training.data import DataError, Split, Splits, load_dataset, split_dataset
from training.evaluate import evaluate_split, model_outputs
from training.export import ONNX_FILE, export_checkpoint
from training.ood_sets import builtin_ood_sets
from training.report import load_ood_set


def fit_gate(model: HybridModel, splits: Splits, settings: GateSettings, batch_size: int = 512, known_outliers: dict[str, np.ndarray] | None = None) -> Gate:
    """The calibrated gate of ``model``. The latent Gaussian sees the labelled training rows; the
    conformal p-values the calibration split only (never trained on or selected with). The learned
    combinations choose their weights against the synthetic outlier sets (image models) and
    ``known_outliers`` (inputs by set name, e.g. logged rejections)."""
    needed = math.ceil(1 / settings.alpha)  # a conformal p-value is at least 1 / (n + 1)
    rows = 0 if splits.calibration is None else len(splits.calibration)
    if rows < needed and (settings.method == "conformal" or rows < 2):
        raise DataError(
            f"the conformal gate needs a calibration split of at least {needed} rows to reject at alpha {settings.alpha}, "
            f"this data gives {rows}: raise data.calibration_fraction or gate.alpha"
        )
    train = model_outputs(model, splits.train.x, batch_size)
    labeled = splits.train.labeled
    labels = splits.train.y[labeled] if model.task == "classification" else None
    space = settings.latent_space or ("head" if model.task == "classification" else "all")
    if space == "head" and model.task != "classification":
        raise ConfigError("gate.latent_space 'head' needs a classification model; use all, coarse or pca")
    neighbours = None
    if settings.neighbour_reference != 0:
        neighbours = LatentNeighbours.fit(train["z"], settings.neighbour_k, settings.neighbour_reference, settings.neighbour_dims)
    fitted = ScoreFit.fit(model, splits.train.x[labeled], train["z"][labeled], labels, space, settings.latent_dims, neighbours)
    validation = model_outputs(model, splits.validation.x, batch_size, fitted=fitted)
    calibration = model_outputs(model, splits.calibration.x, batch_size, fitted=fitted)
    try:
        tails = gate_tails(settings.scores, score_names(calibration))
    except ValueError as error:
        raise ConfigError(f"gate.scores: {error}") from None
    combine = settings.combine or ("max_sum" if draws_synthetic_outliers(model) else "min")
    outliers = None
    if combine in LEARNED_COMBINATIONS:
        sets = dict(known_outliers or {})
        if draws_synthetic_outliers(model) or not sets:
            sets = {**synthetic_outliers(model, splits.validation.x), **sets}
        outliers = [model_outputs(model, images, batch_size, fitted=fitted) for images in sets.values()]
    elif known_outliers:
        raise ConfigError(f"outlier sets are what gate.combine weighted or max_sum choose their weights against; this gate combines with {combine} (--set gate.combine=max_sum)")
    fitted_summary = FittedScores(
        latent_space=space, latent_dims=int(fitted.latent.weight.shape[1]),
        latent_classes=int(fitted.latent.means.shape[0]), neighbour_scale=fitted.neighbour_scale,
        **({} if neighbours is None else {
            "neighbour_reference": len(neighbours.reference), "neighbour_k": neighbours.k,
            "neighbour_dims": None if neighbours.projection is None else int(neighbours.projection.shape[1]),
        }),
    )
    return calibrate_gate(
        train["log_px"], validation, calibration, tails, settings.method, settings.alpha, combine,
        settings.slack, fitted, fitted_summary, outliers, settings.classifier_hidden,
    )


SYNTHETIC_ROWS = 2_000  # validation images the synthetic outliers of the learned combinations are drawn from
SYNTHETIC_SEED = 7919  # not the evaluation's seed, so reports never judge the gate on the very images it was fitted with


def draws_synthetic_outliers(model: HybridModel) -> bool:
    """Whether the model's inputs are single-channel images of quantized levels, which the built-in
    OOD families are drawn like (the learned combination max_sum is the default there)."""
    return hasattr(model.preprocessing, "levels") and len(model.input_shape) == 2


def synthetic_outliers(model: HybridModel, reference_x: np.ndarray) -> dict[str, np.ndarray]:
    """The built-in OOD families (``training.ood_sets``) drawn from up to ``SYNTHETIC_ROWS``
    reference images: what ``gate.combine: weighted | max_sum`` choose their weights against."""
    if not draws_synthetic_outliers(model):
        raise ConfigError(
            "gate.combine 'weighted' and 'max_sum' draw synthetic outliers from images of quantized levels; this model's inputs are not: "
            "use min, or give outlier sets (calibrate --outliers)"
        )
    return builtin_ood_sets(reference_x[:SYNTHETIC_ROWS], model.preprocessing.levels, SYNTHETIC_SEED)


TRAIN_METRICS_ROWS = 10_000  # training-split metrics are reported on a seeded subsample of this size


def subsample(split: Split, rows: int, seed: int) -> Split:
    if len(split) <= rows:
        return split
    index = np.sort(np.random.default_rng(seed).choice(len(split), size=rows, replace=False))
    return Split(split.x[index], split.y[index], split.labeled[index])


def split_metrics(model: HybridModel, gate: Gate, splits: Splits, config: ExperimentConfig) -> dict[str, dict]:
    """The manifest's ``metrics``: train (a seeded subsample), validation, calibration and test."""
    evaluation = config.evaluation
    chosen = {"train": subsample(splits.train, TRAIN_METRICS_ROWS, config.seed), "validation": splits.validation, "calibration": splits.calibration, "test": splits.test}
    return {
        name: evaluate_split(model, gate, split.x, split.y, evaluation.dequantization_samples, evaluation.batch_size, config.seed)[0]
        for name, split in chosen.items()
    }


def write_gated_checkpoint(
    out_dir: str | Path, model: HybridModel, gate: Gate, splits: Splits, config: ExperimentConfig, manifest: ManifestDraft, extra_files: dict[str, Path]
) -> Manifest:
    """Evaluate every split under ``gate`` and write the checkpoint with the gate file (atomically);
    ``manifest``'s gate and metrics sections become ``gate``'s."""
    manifest = manifest.revised(gate=gate.summary, metrics=split_metrics(model, gate, splits, config))
    with tempfile.TemporaryDirectory() as scratch:
        gate_path = Path(scratch) / GATE_FILE
        gate.save(gate_path)
        return save_checkpoint(out_dir, model, manifest, extra_files={**extra_files, GATE_FILE: gate_path})


def score_names(outputs: dict[str, np.ndarray]) -> list[str]:
    """The per-instance score arrays among ``model_outputs``' results."""
    return [name for name, values in outputs.items() if values.ndim == 1 and name not in ("mean", "variance", "log_px_dequantized")]


GATE_SECTIONS = {"gate", "evaluation"}  # config sections a checkpoint's gate can be refitted for without training


def differs_only_in_gate(trained: ExperimentConfig, wanted: ExperimentConfig) -> bool:
    """Whether ``wanted`` matches ``trained`` but for gate and evaluation settings."""
    return trained.model_dump(exclude=GATE_SECTIONS) == wanted.model_dump(exclude=GATE_SECTIONS)


def recalibrate(loaded: LoadedCheckpoint, overrides: list[str], data_dir: str | None = None, outlier_files: list[str] = ()) -> Manifest:
    """Refit the gate of a checkpoint with ``gate.*`` / ``evaluation.*`` overrides of its training
    config (``refit_gate``), the learned weights chosen also against the inputs of ``outlier_files``
    (any file ``evaluate --ood`` reads: IDX or .npz, such as ``decisions --rejected`` writes).
    Returns the manifest written."""
    tree = dict(loaded.manifest.training.config)
    for assignment in overrides:
        if not assignment.split("=", 1)[0].strip().startswith(("gate.", "evaluation.")):
            raise ConfigError(f"calibrate changes only gate.* and evaluation.* settings, not {assignment!r}")
        apply_override(tree, assignment)
    try:
        config = ExperimentConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(validation_message(error.errors(), "config")) from None
    if data_dir is not None:
        config.data.data_dir = Path(data_dir)
    paths = [Path(path) for path in outlier_files]
    known = {path.name: load_ood_set(str(path), {}, tuple(loaded.manifest.input_shape)) for path in paths}
    if len(known) < len(paths):
        raise ConfigError("two outlier files have the same name; give each set a file name of its own")
    recorded = [OutlierSet(name=path.name, sha256=sha256_of(path), rows=len(known[path.name])) for path in paths]
    return refit_gate(loaded, config, known, recorded)


def refit_gate(loaded: LoadedCheckpoint, config: ExperimentConfig, known_outliers: dict[str, np.ndarray] | None = None, recorded: list[OutlierSet] | None = None) -> Manifest:
    """Refit the gate of a checkpoint on the splits it was trained with (rebuilt from ``config``,
    which must match its training config but for ``gate`` and ``evaluation``) and rewrite it
    atomically; ``known_outliers`` as ``fit_gate`` takes them, ``recorded`` in the manifest's gate
    section. The weights do not change; an ONNX model is exported again (its graph holds the fitted
    score parts). Returns the manifest written."""
    trained = ExperimentConfig.model_validate(loaded.manifest.training.config)
    trained.data.data_dir = config.data.data_dir  # where the data lies is not part of what was trained
    if not differs_only_in_gate(trained, config):
        raise ConfigError(f"checkpoint {loaded.path} was trained with another data or model config; only gate.* and evaluation.* may change")
    splits = split_dataset(load_dataset(config.data, config.seed), config.data, config.seed)
    gate = fit_gate(loaded.model, splits, config.gate, config.evaluation.batch_size, known_outliers)
    if recorded:
        gate.summary = gate.summary.revised(outliers=recorded)
    training = loaded.manifest.training.revised(config=config.model_dump(mode="json"))
    manifest = loaded.manifest.draft().revised(onnx=None, training=training)
    keep = {name: loaded.path / name for name in loaded.manifest.files if name not in ("weights.safetensors", GATE_FILE, ONNX_FILE)}
    written = write_gated_checkpoint(loaded.path, loaded.model, gate, splits, config, manifest, keep)
    if loaded.manifest.onnx is not None:
        export_checkpoint(load_checkpoint(loaded.path))
    return written
