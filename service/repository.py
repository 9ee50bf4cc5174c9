"""The model repository on disk and the version policy that picks what to serve from it.

A repository is the Triton / KServe layout: ``ROOT/<name>/<version>/`` with one checkpoint folder
per version, versions positive integers (the newest is the largest). Names are letters, digits and
``_.-`` (no ``/``, not starting with a dot), and a folder or symlink that resolves outside the
repository is not served. A single checkpoint folder (``--model-dir``) is a repository of one: its
model's name and version come from its manifest.
Nothing is loaded here; ``scan`` only lists folders.
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from inference.errors import BadInput
from models.checkpoint import MANIFEST_FILE, read_manifest

log = logging.getLogger(__name__)

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


def check_name(name: str) -> None:
    """``BadInput`` unless ``name`` can be a model folder's name (``NAME_PATTERN``): no path
    separators and no ``..`` can reach outside the repository through the load and unload routes."""
    if not NAME_PATTERN.fullmatch(name):
        raise BadInput(f"{name[:60]!r} is not a model name: letters, digits and _.- (at most 128), starting with a letter or digit")


@dataclass(frozen=True)
class VersionPolicy:
    """Which versions of a model to serve (Triton's version_policy): ``latest`` (the newest one; the
    default), ``latest:N`` (the N newest), ``all``, or pinned versions ``1,3``."""

    kind: str  # "latest", "all" or "specific"
    count: int = 1
    versions: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> "VersionPolicy":
        text = text.strip()
        if text == "all":
            return cls("all")
        if text == "latest" or text.startswith("latest:"):
            count = text.removeprefix("latest").removeprefix(":") or "1"
            if not count.isdigit() or int(count) < 1:
                raise ValueError(f"version policy {text!r}: latest:N needs a positive integer N")
            return cls("latest", int(count))
        versions = tuple(part.strip() for part in text.split(","))
        if not all(part.isdigit() and int(part) > 0 for part in versions):
            raise ValueError(f"version policy {text!r} is not latest, latest:N, all, or versions such as 1,3")
        return cls("specific", versions=versions)

    def select(self, available: list[str]) -> list[str]:
        """The versions to serve among ``available`` (ordered oldest to newest)."""
        if self.kind == "all":
            return list(available)
        if self.kind == "latest":
            return list(available[-self.count:])
        return [version for version in available if version in self.versions]


def parse_policies(entries: list[str]) -> tuple[VersionPolicy, dict[str, VersionPolicy]]:
    """``["latest", "digits=1,3"]`` -> the default policy and the per-model ones (``ValueError`` on a
    malformed entry)."""
    default, per_model = VersionPolicy("latest"), {}
    for entry in entries:
        name, separator, policy = entry.rpartition("=")
        if separator:
            per_model[name.strip()] = VersionPolicy.parse(policy)
        else:
            default = VersionPolicy.parse(policy)
    return default, per_model


@dataclass(frozen=True)
class VersionFolder:
    name: str
    version: str
    path: Path

    def digest(self) -> str | None:
        """The digest its manifest declares (read without verifying; None when unreadable): tells
        a rewritten version (``python -m training calibrate`` in place) from the loaded one."""
        return _declared(self.path).get("digest")

    def fingerprint(self) -> tuple:
        """Name, size and modification time of every file in the folder: changes while a version
        is still being copied in, so a poll that found it incomplete tries again."""
        try:
            return tuple(sorted((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns) for entry in self.path.iterdir()))
        except OSError:
            return ()


class ModelSource:
    """Where models come from: a repository folder, or one checkpoint folder (a repository of one)."""

    def __init__(self, repository: Path | None = None, checkpoint: Path | None = None):
        if (repository is None) == (checkpoint is None):
            raise ValueError("give exactly one of a model repository or a checkpoint folder")
        self.repository, self.checkpoint = repository, checkpoint
        self.refused: set[Path] = set()  # folders leading outside the repository, warned about

    @property
    def is_repository(self) -> bool:
        return self.repository is not None

    def scan(self) -> dict[str, list[VersionFolder]]:
        """Every model and its version folders, oldest to newest. A version folder needs a manifest;
        other entries are skipped (and logged once per scan at debug level)."""
        if self.checkpoint is not None:  # named by its manifest, read without verifying: the load verifies it
            declared = _declared(self.checkpoint)
            if not isinstance(declared.get("name"), str) or not isinstance(declared.get("version"), str):
                read_manifest(self.checkpoint)  # raises the loader's one-line CheckpointError
            return {declared["name"]: [VersionFolder(declared["name"], declared["version"], self.checkpoint)]}
        if not self.repository.is_dir():
            raise FileNotFoundError(f"model repository {self.repository} is not a folder")
        root = self.repository.resolve()
        found = {}
        for model in sorted(self.repository.iterdir()):
            if not model.is_dir() or not NAME_PATTERN.fullmatch(model.name) or not self._inside(model, root):
                continue
            versions = [entry for entry in model.iterdir() if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0 and self._inside(entry, root)]
            skipped = [entry.name for entry in model.iterdir() if entry.is_dir() and entry not in versions]
            if skipped:
                log.debug("%s: skipped folders that are not positive integer versions: %s", model, skipped)
            found[model.name] = [
                VersionFolder(model.name, entry.name, entry)
                for entry in sorted(versions, key=lambda entry: int(entry.name))
                if (entry / MANIFEST_FILE).is_file()
            ]
        return found

    def _inside(self, entry: Path, root: Path) -> bool:
        """Whether ``entry`` resolves to a place inside ``root`` (the resolved repository); a symlink
        that leads out of it is refused, with a warning (once): a repository serves only what it holds."""
        if entry.resolve().is_relative_to(root):
            return True
        if entry not in self.refused:
            self.refused.add(entry)
            log.warning("%s leads outside the model repository (to %s): not served", entry, entry.resolve())
        return False

    def describe(self) -> str:
        return f"model repository {self.repository}" if self.is_repository else f"checkpoint {self.checkpoint}"


def _declared(folder: Path) -> dict:
    """The manifest's fields as written (no verification); empty when it is missing or unreadable."""
    try:
        fields = json.loads((folder / MANIFEST_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return fields if isinstance(fields, dict) else {}
