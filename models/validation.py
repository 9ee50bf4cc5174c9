"""Pydantic's validation errors as the one-line messages every layer shows (a config, a manifest,
the service's settings, a request): the first problem, where and what, and how many more."""
from __future__ import annotations

from typing import Sequence


def validation_message(errors: Sequence[dict], whole: str = "") -> str:
    """``where: what`` of the first of ``errors`` (pydantic's ``errors()``), ``where`` being its
    dotted location (``whole`` when the problem is the object itself), and ``(N more)`` after."""
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"]) or whole
    more = f" ({len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first['msg'].removeprefix('Value error, ')}{more}"
