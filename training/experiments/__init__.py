"""Reproductions of the paper's experiments, one module each. ``EXPERIMENTS`` maps a name to its
``Experiment`` (compute, plot, report); a run writes ``<name>.json`` and PNG figures into the results
folder, the figures' raw data beside the checkpoints, and its own section of the results document."""
from __future__ import annotations

from training.experiments import flights, gate, gmm1d, mnist, moons
from training.experiments.common import Experiment, ExperimentContext

EXPERIMENTS: dict[str, Experiment] = {
    experiment.name: experiment
    for experiment in (gmm1d.EXPERIMENT, moons.EXPERIMENT, flights.EXPERIMENT, mnist.SWEEP_EXPERIMENT, mnist.SEMI_EXPERIMENT, mnist.LONG_EXPERIMENT, gate.EXPERIMENT)
}

__all__ = ["EXPERIMENTS", "Experiment", "ExperimentContext"]
