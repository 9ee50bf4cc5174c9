"""Offline training package: data sets, the training loop and CLI, tau calibration, evaluation."""
