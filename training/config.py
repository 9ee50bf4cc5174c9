"""Experiment configuration: YAML validated by pydantic, with ``key.sub=value`` overrides.

An unknown key or a wrong type is a ``ConfigError`` with a one-line message.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError

from models.config import ModelConfig, StrictModel
from models.conformal import Combine, Tail
from models.gate import CLASSIFIER_MIN_REFERENCE, NEIGHBOUR_DIMS, NEIGHBOUR_K, NEIGHBOUR_REFERENCE, GateMethod
from models.score_classifier import HIDDEN as CLASSIFIER_HIDDEN
from models.scores import LatentSpace
from models.validation import validation_message


class ConfigError(ValueError):
    """The configuration file or an override is invalid."""


class DataConfig(StrictModel):
    name: str = Field("digits", description="registered data set (see training.data.DATASETS)")
    data_dir: Path | None = Field(None, description="folder with data files, for data sets that read files")
    validation_fraction: float = Field(0.15, gt=0, lt=1, description="share of the non-test rows for early stopping")
    calibration_fraction: float = Field(
        0.1, ge=0, lt=0.5, description="share of the non-test rows held out for the gate's conformal calibration (0: none)"
    )
    test_fraction: float = Field(0.2, gt=0, lt=1, description="ignored when the data set has its own test split")
    limit: int | None = Field(None, ge=10, description="keep only this many examples (stratified), for quick runs")
    labels_per_class: int | None = Field(None, ge=1, description="semi-supervised: keep labels for N training examples per class")
    unlabeled: Literal["keep", "drop"] = Field("keep", description="with labels_per_class: train on the unlabeled rows too, or drop them")
    options: dict[str, Any] = Field(default_factory=dict, description="data-set specific options (files, columns)")
    add_to_train: list[Path] = Field(
        default_factory=list,
        description="labelled .npz files (arrays x and y, such as python -m training decisions --labels writes) whose rows are added to the "
        "training split, after the split: never to validation, calibration or test",
    )


class TrainConfig(StrictModel):
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamax"] = "adam"
    learning_rate: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(100, ge=0, description="linear learning-rate warm-up")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="learning rate after the warm-up: constant, or a cosine decay to 0 at the end of the run's last epoch"
    )
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(50.0, gt=0, description="maximum gradient norm")
    lambda_per_dim: float = Field(0.01, ge=0, description="weight of log p(x) per dimension: lambda = value / D")
    entropy_weight: float = Field(0.0, ge=0, description="semi-supervised: entropy penalty on unlabeled p(y|x)")
    labeled_share: float | None = Field(
        None, gt=0, lt=1,
        description="semi-supervised: this share of every batch is drawn from the labeled rows, the rest from the unlabeled ones "
        "(an epoch is one pass over the unlabeled rows; labeled rows cycle); None: batches drawn from all rows alike",
    )
    max_bad_steps: int = Field(20, ge=0, description="abort after this many steps with a non-finite loss or gradient")
    patience: int | None = Field(10, ge=1, description="stop after this many epochs without a better validation loss")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = Field(False, description="torch.compile the training step's loss (faster long runs; ~30-80 s to compile)")


class GateSettings(StrictModel):
    method: GateMethod = Field("conformal", description="conformal p-values of several scores, or a tau on log p(x) (validation, min_train)")
    alpha: float = Field(0.01, gt=0, lt=1, description="target false-rejection rate (conformal: p-value level; validation: tau quantile)")
    scores: dict[str, Tail] | None = Field(
        None, description="conformal: gate scores and the tail that counts as outlying; default models.gate.DEFAULT_SCORES where available"
    )
    combine: Combine | None = Field(
        None,
        description="conformal: how the scores combine (min: the strongest evidence; max_sum: the strongest evidence plus a weighted sum of all, "
        "weights chosen against synthetic outliers, images only; weighted: the strongest weighted evidence, likewise; fisher: their sum; all "
        "calibrated; bonferroni); default max_sum for images, else min",
    )
    latent_space: LatentSpace | None = Field(
        None, description="latent_distance: the head's logit space (default for classification), all of z (default for regression), the coarsest level's latents, or a PCA projection"
    )
    latent_dims: int | None = Field(None, ge=1, description="latent_distance with latent_space=pca: principal directions kept")
    neighbour_reference: int | None = Field(
        NEIGHBOUR_REFERENCE, ge=0, description="neighbour_distance: training latents kept as its reference (a seeded sample; null: all; 0: no such score)"
    )
    neighbour_k: int = Field(NEIGHBOUR_K, ge=1, description="neighbour_distance: the distance to the k-th nearest reference latent counts")
    neighbour_dims: int | None = Field(
        NEIGHBOUR_DIMS, ge=1, description="neighbour_distance: principal directions of the normalised latents it compares in (null: all of z)"
    )
    classifier_hidden: int = Field(
        CLASSIFIER_HIDDEN, ge=0, description="max_sum: hidden units per member of the classifier ensemble of the gate scores' pattern (in-distribution against "
        f"the synthetic outliers) whose surprise joins the sum with a weight fitted leave one family out, where the reference split has "
        f"{CLASSIFIER_MIN_REFERENCE:,} rows; 0: none",
    )
    slack: float = Field(0.0, ge=0, description="min_train tau: slack c in nats below the training minimum")


class EvaluationConfig(StrictModel):
    dequantization_samples: int = Field(4, ge=1, description="noise draws averaged for reported bits/dim")
    batch_size: int = Field(512, ge=1)


class ExperimentConfig(StrictModel):
    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9._-]*$", description="model name in the service's URLs")
    seed: int = 0
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gate: GateSettings = GateSettings()
    evaluation: EvaluationConfig = EvaluationConfig()


def apply_override(tree: dict, assignment: str) -> None:
    """Set ``a.b.c=value`` in a nested dict; the value is parsed as YAML (numbers, lists, null)."""
    key, sep, raw_value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    *parents, leaf = key.strip().split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is not a section")
        node = child
    try:
        node[leaf] = yaml.safe_load(raw_value)
    except yaml.YAMLError:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML") from None


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path} must hold a mapping of settings")
    for assignment in overrides:
        apply_override(tree, assignment)
    try:
        return ExperimentConfig.model_validate(tree)
    except ValidationError as error:
        raise ConfigError(f"{path}: {validation_message(error.errors(), 'config')}") from None
