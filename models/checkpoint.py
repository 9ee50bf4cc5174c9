"""The checkpoint: one folder holding ``manifest.json``, ``weights.safetensors`` and
``gate.safetensors`` (the gate's latent Gaussian and calibration arrays, ``models.gate``), plus
optional files such as ``model.onnx``, each listed in the manifest with its sha256.

The manifest is sealed: its ``digest`` covers every field (tau, calibration, config, the file
hashes) and the version is derived from it, so an edited field is refused at load. Sites that want
provenance sign the digest with a key (HMAC-SHA256, ``sign_checkpoint``) and load with that key.

The folder is written atomically: into a temporary sibling folder, synced to disk, then swapped
with the old one in one step (``renameat2`` with ``RENAME_EXCHANGE`` on Linux; elsewhere two
renames), so a crash or a full disk never leaves a half-written checkpoint or loses the one before
(a full disk is a one-line ``CheckpointError``). A staging folder left by a writer that was killed
is removed by the next write to the same place on the same machine (its name holds the PID).
Loading checks the format version and every hash and raises ``CheckpointError`` with a one-line
message that says what is wrong.
"""
from __future__ import annotations

import ctypes
import errno
import glob
import hashlib
import hmac
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models.gate import GATE_FILE, Gate
from models.hybrid import HybridModel
from models.manifest import FORMAT_VERSION, Manifest, ManifestDraft
from models.validation import validation_message

MANIFEST_FILE = "manifest.json"
WEIGHTS_FILE = "weights.safetensors"
UNSEALED_FIELDS = ("digest", "version", "signature")  # what the digest does not cover
AT_FDCWD, RENAME_EXCHANGE = -100, 2  # renameat2(2)


class CheckpointError(Exception):
    """A checkpoint is missing, damaged, or of a format this code does not read."""


@dataclass
class LoadedCheckpoint:
    model: HybridModel
    gate: Gate
    manifest: Manifest
    path: Path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(fields: dict) -> str:
    """sha256 of the canonical JSON (sorted keys, no spaces) of ``fields`` but ``UNSEALED_FIELDS``."""
    sealed = {key: value for key, value in fields.items() if key not in UNSEALED_FIELDS}
    return hashlib.sha256(json.dumps(sealed, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()).hexdigest()


def signature_of(digest: str, key: bytes) -> str:
    return hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()


def _write_manifest(path: Path, manifest: Manifest) -> None:
    path.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2, allow_nan=False) + "\n")


def save_checkpoint(
    directory: str | Path, model: HybridModel, manifest: ManifestDraft, extra_files: dict[str, Path] | None = None
) -> Manifest:
    """Write model weights, ``extra_files`` (name -> source path, copied) and the manifest (sealed:
    ``format_version``, ``model``, ``files``, ``digest`` and ``version`` added, and validated before
    anything is replaced) into ``directory``, replacing an existing checkpoint there only once the
    new one is complete. A signature is not carried over (it would no longer match). Returns the
    manifest written."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_staging(directory)
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-", dir=directory.parent))
    except OSError as error:
        raise _unwritable(directory, error) from error
    try:
        state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
        save_file(state, staging / WEIGHTS_FILE)
        for name, source in (extra_files or {}).items():
            shutil.copyfile(source, staging / name)
        files = {path.name: sha256_of(path) for path in sorted(staging.iterdir())}
        fields = manifest.model_dump(mode="json", include=set(ManifestDraft.model_fields))  # a Manifest's seal is replaced
        fields.update(format_version=FORMAT_VERSION, model=model.config.model_dump(mode="json"), files=files)
        validated = Manifest.model_validate({**fields, "version": "", "digest": ""})
        digest = manifest_digest(validated.model_dump(mode="json"))  # as written, defaults filled in
        manifest = validated.model_copy(update={"digest": digest, "version": digest[:12]})
        _write_manifest(staging / MANIFEST_FILE, manifest)
        _sync(staging)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, (OSError, SafetensorError)):  # a full disk, a read-only or vanished folder: one line, nothing replaced
            raise _unwritable(directory, error) from error
        raise
    if not directory.exists():
        staging.rename(directory)
    elif _exchange(staging, directory):
        shutil.rmtree(staging)  # the old checkpoint, now at the staging path
    else:
        retired = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-{os.getpid()}-", dir=directory.parent))
        directory.rename(retired / directory.name)
        staging.rename(directory)
        shutil.rmtree(retired)
    _sync_folder(directory.parent)
    return manifest


def _unwritable(directory: Path, error: Exception) -> CheckpointError:
    kept = "the checkpoint there is unchanged" if directory.exists() else "nothing was written there"
    reason = getattr(error, "strerror", None) or str(error).strip().splitlines()[0]
    return CheckpointError(f"cannot write checkpoint {directory}: {reason}; {kept}")


def _sync(folder: Path) -> None:
    """Every file of ``folder`` and then the folder itself to disk (``fsync``)."""
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2`` with ``RENAME_EXCHANGE``); False where this
    system or file system cannot."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    error = ctypes.get_errno()
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(error, os.strerror(error), str(second))


def _remove_stale_staging(directory: Path) -> None:
    """The staging folders of earlier writes to ``directory`` whose process is gone (killed
    mid-write: ``.NAME.tmp-PID-*``)."""
    prefix = f".{directory.name}.tmp-"
    for entry in directory.parent.glob(glob.escape(prefix) + "*"):
        pid = entry.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: whether it exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        pass
    return True


def read_manifest(directory: str | Path, signing_key: bytes | None = None) -> Manifest:
    """The manifest after checking the format version, the sha256 of every listed file, the schema
    (``models.manifest``), the digest and the version derived from it, and, with ``signing_key``,
    the signature."""
    directory = Path(directory)
    manifest_path = directory / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"no checkpoint at {directory}: {MANIFEST_FILE} is missing")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{manifest_path} is not valid JSON ({error})") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{manifest_path} does not hold a JSON object")
    found = manifest.get("format_version")
    if found != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {directory} has format version {found!r}, this code reads version {FORMAT_VERSION}; retrain it"
        )
    files = manifest.get("files")
    for required in (WEIGHTS_FILE, GATE_FILE):
        if not isinstance(files, dict) or required not in files:
            raise CheckpointError(f"{manifest_path} does not list {required} with its sha256")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"checkpoint {directory} is missing {name}")
        if sha256_of(path) != expected:
            raise CheckpointError(f"checkpoint file {path} does not match its sha256 in the manifest (changed or damaged)")
    try:
        validated = Manifest.model_validate(manifest)
    except ValidationError as error:
        raise CheckpointError(f"{manifest_path}: {validation_message(error.errors(), 'manifest')}") from None
    digest = manifest_digest(manifest)
    if manifest.get("digest") != digest or manifest.get("version") != digest[:12]:
        raise CheckpointError(
            f"{manifest_path} does not match its digest: it was edited after the checkpoint was written; "
            "refit the gate with python -m training calibrate, or retrain"
        )
    if signing_key is not None and not hmac.compare_digest(str(manifest.get("signature") or ""), signature_of(digest, signing_key)):
        raise CheckpointError(f"checkpoint {directory} is not signed with the configured key; sign it with python -m training sign")
    return validated


def sign_checkpoint(directory: str | Path, key: bytes) -> Manifest:
    """Add the HMAC-SHA256 of the manifest's digest with ``key`` (after verifying the checkpoint);
    the manifest is replaced atomically."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    manifest = manifest.model_copy(update={"signature": signature_of(manifest.digest, key)})
    staging = directory / f".{MANIFEST_FILE}.tmp"
    _write_manifest(staging, manifest)
    staging.replace(directory / MANIFEST_FILE)
    return manifest


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu", signing_key: bytes | None = None) -> LoadedCheckpoint:
    """Verify and load a checkpoint; the model is in eval mode on ``device``. With ``signing_key``,
    an unsigned checkpoint or one signed with another key is refused."""
    directory = Path(directory)
    manifest = read_manifest(directory, signing_key)
    try:
        model = HybridModel(manifest.model)
        model.load_state_dict(load_file(directory / WEIGHTS_FILE))
        gate = Gate.load(manifest.gate, directory / manifest.gate.file)
    except (SafetensorError, RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0]
        raise CheckpointError(f"checkpoint {directory} weights do not fit its model config: {first_line}") from None
    if gate.fitted is not None:
        gate.fitted.to(device)
    return LoadedCheckpoint(model=model.to(device).eval(), gate=gate, manifest=manifest, path=directory)
