"""The training pipeline: data -> model -> training loop with validation and best-state keeping ->
Bayesian head fit -> gate calibration -> test evaluation -> checkpoint."""
from __future__ import annotations

import copy
import logging
import math
import random
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from models.checkpoint import LoadedCheckpoint, load_checkpoint
from models.config import ModelConfig
from models.device import resolve_device
from models.gate import bits_per_dim
from models.heads import BayesianLinearHead, SufficientStatistics
from models.hybrid import HybridModel
from models.manifest import DataSummary, Manifest, ManifestDraft, TrainingRecord
from models.preprocessing import Standardize
from training.config import ExperimentConfig
from training.calibration import fit_gate, write_gated_checkpoint
from training.data import Dataset, Split, Splits, load_dataset, split_dataset
from training.distributed import Cluster, data_parallel
from training.optimizer_state import OPTIMIZER_FILE, load_optimizer_state, save_optimizer_state

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (diverged, or the resumed checkpoint does not fit the config)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def complete_model_config(config: ModelConfig, dataset: Dataset) -> ModelConfig:
    """Fill the settings that come from the data: input shape, levels and number of classes."""
    config = config.model_copy(deep=True)
    config.input_shape = config.input_shape or dataset.input_shape
    if config.input_shape != dataset.input_shape:
        raise TrainingError(f"model.input_shape {config.input_shape} does not match the data's {dataset.input_shape}")
    if config.preprocessing.kind == "dequantize":
        if dataset.levels is None:
            raise TrainingError("data set has continuous values: use preprocessing.kind=standardize")
        config.preprocessing.levels = config.preprocessing.levels or dataset.levels
    if config.task != dataset.task:
        raise TrainingError(f"head {config.head.kind!r} is for {config.task}, but the data set is for {dataset.task}")
    if config.task == "classification":
        config.head.num_classes = config.head.num_classes or len(dataset.classes)
    return config


def _set_output_fallbacks(model: HybridModel, train: Split) -> None:
    """Label prior (training label frequencies) or target moments: the answer for rejected inputs."""
    with torch.no_grad():
        labels = train.y[train.labeled]
        if model.task == "classification":
            counts = np.bincount(labels, minlength=model.config.head.num_classes).astype(np.float64)
            model.label_prior.copy_(torch.from_numpy(counts / counts.sum()))
        else:
            model.target_moments.copy_(torch.tensor([labels.mean(), labels.var()]))


def _batches(split: Split, batch_size: int, generator: torch.Generator | None):
    order = torch.randperm(len(split), generator=generator).numpy() if generator is not None else np.arange(len(split))
    for start in range(0, len(split), batch_size):
        index = order[start : start + batch_size]
        yield (torch.from_numpy(split.x[index]), torch.from_numpy(split.y[index]), torch.from_numpy(split.labeled[index]))


def _labeled_per_batch(batch_size: int, labeled_share: float) -> int:
    """Labeled rows in each mixed batch: the share of the batch, at least one, and one row short of it."""
    return min(batch_size - 1, max(1, round(labeled_share * batch_size)))


def _mixed_batches(split: Split, batch_size: int, labeled_share: float, generator: torch.Generator):
    """Batches of ``_labeled_per_batch`` labeled rows and the rest unlabeled, drawn separately: one
    pass over the unlabeled rows in a fresh order, the labeled rows cycling through fresh orders of
    their own."""
    labeled_rows, unlabeled_rows = np.flatnonzero(split.labeled), np.flatnonzero(~split.labeled)
    per_batch = _labeled_per_batch(batch_size, labeled_share)
    rest = batch_size - per_batch
    unlabeled_order = unlabeled_rows[torch.randperm(len(unlabeled_rows), generator=generator).numpy()]
    steps = mixed_steps(split, batch_size, labeled_share)
    passes = math.ceil(steps * per_batch / len(labeled_rows))
    labeled_order = np.concatenate([labeled_rows[torch.randperm(len(labeled_rows), generator=generator).numpy()] for _ in range(passes)])
    for step in range(steps):
        index = np.concatenate([labeled_order[step * per_batch : (step + 1) * per_batch], unlabeled_order[step * rest : (step + 1) * rest]])
        yield (torch.from_numpy(split.x[index]), torch.from_numpy(split.y[index]), torch.from_numpy(split.labeled[index]))


def mixed_steps(split: Split, batch_size: int, labeled_share: float) -> int:
    """Steps per epoch of ``_mixed_batches``."""
    return math.ceil(int((~split.labeled).sum()) / (batch_size - _labeled_per_batch(batch_size, labeled_share)))


def learning_rate_factor(warmup_steps: int, total_steps: int, schedule: str, step: int) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based): a linear warm-up
    over ``warmup_steps``, then constant or a cosine decay reaching 0 at ``total_steps``."""
    warmup = min(1.0, (step + 1) / max(warmup_steps, 1))
    if schedule == "constant" or step < warmup_steps:
        return warmup
    progress = min(1.0, (step - warmup_steps) / max(total_steps - warmup_steps, 1))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


class Trainer:
    def __init__(self, config: ExperimentConfig, progress: bool = True, cluster: Cluster = Cluster()):
        """``cluster``: this process's place in data-parallel training (``training.distributed``);
        rank 0 alone shows progress, and alone calibrates and writes the checkpoint."""
        self.config = config
        self.cluster = cluster
        self.progress = progress and cluster.is_main
        self.device = cluster.device(resolve_device(config.train.device))

    def _noise(self, model: HybridModel, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
        """Dequantization noise u ~ U[0, 1) of ``x``'s shape (None for continuous data)."""
        preprocessing = model.config.preprocessing
        if preprocessing.kind != "dequantize" and not preprocessing.dequantize_integers:
            return None
        return torch.rand(x.shape, generator=generator).to(self.device)

    @torch.no_grad()
    def validation_loss(self, model: HybridModel, split: Split) -> dict[str, float]:
        """Mean loss (u = 1/2), bits/dim and accuracy (classification) on a split."""
        model.eval()
        train = self.config.train
        total_loss, total_log_px, correct, count = 0.0, 0.0, 0, 0
        for x, y, labeled in _batches(split, max(train.batch_size, 512), None):
            x, y, labeled = x.to(self.device), y.to(self.device), labeled.to(self.device)
            loss, output = model.loss(x, y, labeled, train.lambda_per_dim, train.entropy_weight)
            total_loss += float(loss) * len(x)
            total_log_px += float(output.log_px.sum())
            if model.task == "classification":
                correct += int((model.head.predict(output.z)["probabilities"].argmax(1) == y).sum())
            count += len(x)
        result = {"loss": total_loss / count, "bits_per_dim": float(bits_per_dim(total_log_px / count, model.dims))}
        if model.task == "classification":
            result["accuracy"] = correct / count
        return result

    def fit(self, model: HybridModel, splits: Splits, start_epoch: int = 0, resume_from: LoadedCheckpoint | None = None) -> TrainingRecord:
        """Train with warm-up, clipping, a NaN guard and early stopping; keep the best state by
        validation loss. ``resume_from``: continue its optimizer state and schedule. Returns the
        training record for the manifest; the optimizer and schedule stay in ``self``."""
        train = self.config.train
        optimizer_class = torch.optim.Adamax if train.optimizer == "adamax" else torch.optim.Adam
        all_labeled = bool(splits.train.labeled.all())
        optimizer = optimizer_class(model.parameters(), lr=train.learning_rate, weight_decay=train.weight_decay)
        mixed = train.labeled_share is not None and not all_labeled and bool(splits.train.labeled.any())
        steps_per_epoch = mixed_steps(splits.train, train.batch_size, train.labeled_share) if mixed else math.ceil(len(splits.train) / train.batch_size)
        total_steps = (start_epoch + train.epochs) * steps_per_epoch  # a resumed run decays over its extended length
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, partial(learning_rate_factor, train.warmup_steps, total_steps, train.schedule))
        saved = resume_from.manifest.training.optimizer if resume_from is not None else None
        if saved is not None:
            load_optimizer_state(optimizer, scheduler, resume_from.path / saved.file, saved)
        self.optimizer, self.scheduler = optimizer, scheduler
        generator = torch.Generator().manual_seed(self.config.seed)
        cluster = self.cluster
        step_loss = data_parallel(model, cluster, partly_labeled=not all_labeled)
        loss_fn = torch.compile(step_loss) if train.compile else step_loss
        best = {"loss": math.inf, "epoch": start_epoch, "state": copy.deepcopy(model.state_dict())}
        history, bad_steps, started = [], 0, time.perf_counter()
        epochs = range(start_epoch, start_epoch + train.epochs)
        labeled_fraction = float(splits.train.labeled.mean()) if mixed else None
        bar = tqdm(total=train.epochs * steps_per_epoch, desc="training", unit="step", disable=not self.progress)
        for epoch in epochs:
            model.train()
            epoch_loss, epoch_steps = 0.0, 0
            batches = _mixed_batches(splits.train, train.batch_size, train.labeled_share, generator) if mixed else _batches(splits.train, train.batch_size, generator)
            for x, y, labeled in batches:
                noise = self._noise(model, x, generator)  # the whole batch's, on every process
                if len(x) < cluster.world_size:  # too few rows to give every process one
                    continue
                shares = cluster.shares(labeled)
                if cluster.distributed:
                    x, y, labeled = cluster.shard(x, y, labeled)
                    noise = None if noise is None else cluster.shard(noise)[0]
                x, y = x.to(self.device), y.to(self.device)
                labeled = None if all_labeled else labeled.to(self.device)
                loss, output = loss_fn(x, y, labeled, train.lambda_per_dim, train.entropy_weight, noise, shares, labeled_fraction)
                optimizer.zero_grad(set_to_none=True)
                finite = cluster.all_finite(loss)
                if finite:
                    loss.backward()
                    finite = bool(torch.isfinite(torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)))
                bar.update(1)
                if not finite:
                    bad_steps += 1
                    if bad_steps > train.max_bad_steps:
                        raise TrainingError(
                            f"{bad_steps} steps had a non-finite loss or gradient; lower train.learning_rate or raise train.grad_clip"
                        )
                    continue
                optimizer.step()
                scheduler.step()
                step_loss_value = loss.item() / (shares.rows if shares else 1.0)  # this process's rows' mean
                epoch_loss, epoch_steps = epoch_loss + loss.item(), epoch_steps + 1
                bar.set_postfix(epoch=epoch + 1, loss=f"{step_loss_value:.3f}", bpd=f"{bits_per_dim(output.log_px.detach().mean().item(), model.dims):.3f}")
            train_loss = cluster.mean(epoch_loss) / max(epoch_steps, 1)  # the whole batches' mean loss
            validation = self.validation_loss(model, splits.validation)
            history.append({"epoch": epoch + 1, "train_loss": train_loss, **validation})
            if self.progress and steps_per_epoch > 1:
                tqdm.write(f"epoch {epoch + 1}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in validation.items()))
            if validation["loss"] < best["loss"]:
                best = {"loss": validation["loss"], "epoch": epoch + 1, "state": copy.deepcopy(model.state_dict())}
            elif train.patience is not None and epoch + 1 - best["epoch"] >= train.patience:
                log.info("early stop after epoch %d (best %d)", epoch + 1, best["epoch"])
                break
        bar.close()
        model.load_state_dict(best["state"])
        return TrainingRecord(
            epochs_completed=history[-1]["epoch"] if history else start_epoch, best_epoch=best["epoch"], best_validation_loss=best["loss"],
            bad_steps=bad_steps, seconds=time.perf_counter() - started, history=history,
        )

    @torch.no_grad()
    def fit_bayesian_head(self, model: HybridModel, split: Split) -> dict | None:
        """Closed-form posterior on all training latents; alpha and sigma0 by marginal likelihood
        when the flow was trained with the Gaussian objective."""
        head = model.head
        if not isinstance(head, BayesianLinearHead):
            return None
        model.eval()
        stats = None
        for x, y, labeled in _batches(split, 1024, None):
            z = model(x.to(self.device)).z
            batch = SufficientStatistics.from_batch(z[labeled], y.to(self.device)[labeled])
            stats = batch if stats is None else stats + batch
        with torch.enable_grad():
            per_example = head.fit_posterior(stats, optimize_hyperparameters=head.objective == "gaussian")
        return {
            "log_marginal_likelihood_per_example": per_example,
            "alpha": float(head.alpha),
            "noise_std": float(head.noise_variance.sqrt()),
            "hyperparameters": "marginal likelihood (post hoc)" if head.objective == "gaussian" else "trained with the flow",
        }

    def run(self, out_dir: str | Path, resume: str | Path | None = None) -> Manifest | None:
        """Train, fit the head and the gate, evaluate and write the checkpoint; its manifest (None
        on the processes other than rank 0 of data-parallel training)."""
        config = self.config
        seed_everything(config.seed)
        dataset = load_dataset(config.data, config.seed)
        splits = split_dataset(dataset, config.data, config.seed)
        model_config = complete_model_config(config.model, dataset)
        start_epoch, previous = 0, None
        if resume is not None:
            previous = load_checkpoint(resume, self.device)
            if previous.model.config != model_config:
                raise TrainingError(f"checkpoint {resume} was trained with another model config; cannot resume")
            model = previous.model
            start_epoch = previous.manifest.training.epochs_completed
        else:
            model = HybridModel(model_config).to(self.device)
            if isinstance(model.preprocessing, Standardize):
                model.preprocessing.fit(torch.from_numpy(splits.train.x).reshape(len(splits.train), -1).to(self.device))
            model.train()
            with torch.no_grad():  # data-dependent actnorm initialisation
                first = torch.from_numpy(splits.train.x[: min(len(splits.train), 512)]).to(self.device)
                model(first, self._noise(model, first, torch.Generator().manual_seed(config.seed)))
        _set_output_fallbacks(model, splits.train)
        record = self.fit(model, splits, start_epoch, previous)
        if not self.cluster.is_main:
            return None
        bayesian = self.fit_bayesian_head(model, splits.train)
        gate = fit_gate(model, splits, config.gate, config.evaluation.batch_size)
        with tempfile.TemporaryDirectory() as scratch:
            optimizer_path = Path(scratch) / OPTIMIZER_FILE
            training = record.revised(
                bayesian_head=bayesian, device=str(self.device), config=config.model_dump(mode="json"),
                optimizer=save_optimizer_state(self.optimizer, self.scheduler, optimizer_path),
            )
            manifest = ManifestDraft(
                name=config.name, task=dataset.task, input_shape=dataset.input_shape,
                input_range=[0, dataset.levels - 1] if dataset.levels else None, classes=dataset.classes,
                preprocessing=model_config.preprocessing, gate=gate.summary,
                label_prior=model.label_prior.tolist() if dataset.task == "classification" else None,
                target_moments=model.target_moments.tolist() if dataset.task == "regression" else None,
                data=DataSummary(
                    name=config.data.name, description=dataset.description,
                    sizes={name: len(split) for name, split in vars(splits).items()}, labeled_train=int(splits.train.labeled.sum()),
                ),
                training=training, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            )
            return write_gated_checkpoint(out_dir, model, gate, splits, config, manifest, {OPTIMIZER_FILE: optimizer_path})

