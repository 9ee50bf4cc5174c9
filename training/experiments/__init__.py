"""Reproductions of the paper's experiments, one module each. ``EXPERIMENTS`` maps a name to
``run(context) -> dict``; every run writes ``<name>.json`` and PNG figures into the results folder
and its own section of the results document."""
from __future__ import annotations

from training.experiments import flights, gate, gmm1d, mnist, moons
from training.experiments.common import ExperimentContext

EXPERIMENTS = {
    "gmm1d": gmm1d.run,
    "moons": moons.run,
    "flights": flights.run,
    "mnist-sweep": mnist.run_sweep,
    "mnist-semi": mnist.run_semi,
    "gate": gate.run,
}

__all__ = ["EXPERIMENTS", "ExperimentContext"]
