"""The checkpoint manifest (``manifest.json``) as one type: every section a pydantic model, validated
when a checkpoint is written and when it is read, and read through attributes everywhere. Units:
log p(x) and taus in nats; sizes in rows."""
from __future__ import annotations

from typing import Any, Literal

from typing_extensions import Self

from pydantic import BaseModel, ConfigDict

from models.config import ModelConfig, PreprocessingConfig
from models.conformal import Combine, Tail

GateMethod = Literal["conformal", "validation", "min_train"]
FORMAT_VERSION = 3  # 2: the conformal gate (gate.safetensors, gate.scores / alpha / combine); 3: the manifest's digest


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    def revised(self, **changes: Any) -> Self:
        """A copy with ``changes``, validated (pydantic's ``model_copy`` does not validate)."""
        return self.model_validate({**dict(self), **changes})


class LogPxSummary(Section):
    """Count, non-finite count, min, max, mean, std and quantiles of finite log p(x) (nats)."""

    count: int
    non_finite: int
    min: float
    max: float
    mean: float
    std: float
    quantiles: dict[str, float]


class MinTrainTau(Section):
    tau: float
    slack: float


class ValidationTau(Section):
    tau: float
    false_rejection_rate: float


class FittedScores(Section):
    """What the gate's fitted score parts are (the arrays live in the gate file)."""

    latent_space: str
    latent_dims: int
    latent_classes: int
    neighbour_scale: float | None
    neighbour_reference: int | None = None  # latents in the neighbour_distance reference (None: no such score)
    neighbour_k: int | None = None
    neighbour_dims: int | None = None  # PCA directions it compares in (None: all of z)


class OutlierSet(Section):
    """A set of known outliers the learned weights were also chosen against (``python -m training
    calibrate --outliers``): the file's name, sha256 and rows."""

    name: str
    sha256: str
    rows: int


class GateSection(Section):
    """The gate (``models.gate``): its method and level, the scores with their outlying tails, the
    sizes of the reference and calibration splits, both taus on log p(x) and summaries of log p(x)
    per split. ``file`` holds the arrays the p-values need."""

    method: GateMethod
    alpha: float
    tau: float
    combine: Combine
    weights: dict[str, float] | None = None  # combine weighted | max_sum: each score's surprise weight
    outliers: list[OutlierSet] | None = None  # weighted | max_sum: given outlier sets, beside the synthetic ones
    scores: dict[str, Tail]
    calibration_size: int
    reference_size: int
    fitted: FittedScores | None
    file: str
    min_train: MinTrainTau
    validation: ValidationTau
    statistics: dict[str, LogPxSummary]

    def tau_of(self, method: GateMethod) -> float:
        """The tau a method accepts at (the conformal gate records the validation tau)."""
        return self.min_train.tau if method == "min_train" else self.validation.tau


class OnnxSection(Section):
    file: str
    input: str
    outputs: list[str]
    dynamic_batch: bool
    parity_max_abs_difference: dict[str, float]


class DataSummary(Section):
    name: str
    description: str
    sizes: dict[str, int]
    labeled_train: int


class OptimizerRecord(Section):
    file: str
    param_groups: list[dict[str, Any]]
    scheduler_last_epoch: int


class TrainingRecord(Section):
    epochs_completed: int = 0
    best_epoch: int = 0
    best_validation_loss: float | None = None
    bad_steps: int = 0
    seconds: float = 0.0
    history: list[dict[str, float]] = []
    bayesian_head: dict[str, Any] | None = None
    device: str | None = None
    config: dict[str, Any] | None = None  # the training config (training.config.ExperimentConfig as JSON)
    optimizer: OptimizerRecord | None = None


class ManifestDraft(Section):
    """What the writer of a checkpoint states; ``models.checkpoint.save_checkpoint`` seals it into a
    ``Manifest`` (format version, model config, file hashes, digest and version)."""

    name: str
    task: Literal["classification", "regression"]
    input_shape: list[int]
    input_range: list[float] | None = None
    classes: list[str] | None = None
    preprocessing: PreprocessingConfig
    gate: GateSection
    label_prior: list[float] | None = None
    target_moments: list[float] | None = None
    metrics: dict[str, dict[str, float]] = {}
    data: DataSummary | None = None
    training: TrainingRecord = TrainingRecord()
    created: str | None = None
    onnx: OnnxSection | None = None


class Manifest(ManifestDraft):
    """A sealed draft. ``digest``: sha256 of the canonical JSON of every other field but ``version``
    and ``signature`` (file hashes included, so it covers the whole checkpoint); ``version`` is its
    first 12 hex digits; ``signature``: an optional HMAC-SHA256 of the digest (``python -m training
    sign``)."""

    format_version: int
    version: str
    digest: str
    signature: str | None = None
    model: ModelConfig
    files: dict[str, str]

    def draft(self) -> ManifestDraft:
        """Its stated fields, to change and write again with ``save_checkpoint``."""
        return ManifestDraft(**{name: getattr(self, name) for name in ManifestDraft.model_fields})
