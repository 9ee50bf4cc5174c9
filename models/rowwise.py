"""Matrix products whose every row is computed the same way whatever the batch around it.

A BLAS product ``a @ b`` picks its kernel, and with it the order of the sums, by the number of rows:
the same row of ``a`` gets a different last bit alone (a matrix-vector kernel) than in a batch. The
gate's float64 arithmetic on scores uses these instead, so an input's p-value never depends on
who else was in its batch (docs/gate.md, "Same input, same answer"). For the small matrices of
the gate (tens of columns) the cost is nothing to speak of.
"""
from __future__ import annotations

import numpy as np


def row_products(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for ``a`` ``(N, k)`` and ``b`` ``(k, h)`` or ``(k,)``: ``(N, h)`` or ``(N,)``. Each
    entry is numpy's sum over a contiguous last axis of length k, an order fixed by k alone."""
    a = np.asarray(a)
    b = np.asarray(b)
    with np.errstate(invalid="ignore", over="ignore"):  # IEEE results (inf * 0 is NaN) without warnings, as ``@`` gives them
        if b.ndim == 1:
            return (a * b).sum(axis=-1)
        return (a[:, None, :] * b.T[None, :, :]).sum(axis=-1)
