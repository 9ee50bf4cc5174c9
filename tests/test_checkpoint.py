"""Checkpoint round trip, integrity checks and atomic replacement."""
import errno
import hashlib
import hmac
import json

import pytest
import torch

from models.checkpoint import FORMAT_VERSION, CheckpointError, load_checkpoint, manifest_digest, save_checkpoint, sign_checkpoint
from models.gate import GATE_FILE, calibrate_gate
from models.manifest import Manifest, ManifestDraft
from tests.test_heads import classifier
from training.evaluate import model_outputs


def gated_manifest(model, folder) -> tuple[ManifestDraft, dict]:
    """A manifest with a gate calibrated on random digits, and the gate file to save beside it."""
    outputs = model_outputs(model, torch.randint(0, 17, (60, 8, 8)).float().numpy())
    gate = calibrate_gate(outputs["log_px"], outputs, outputs, {"log_px": "both"}, "conformal", 0.05)
    gate.save(folder / "gate-source.safetensors")
    manifest = ManifestDraft(name="digits", task="classification", input_shape=[8, 8], preprocessing=model.config.preprocessing, gate=gate.summary)
    return manifest, {GATE_FILE: folder / "gate-source.safetensors"}


@pytest.fixture
def saved(tmp_path):
    model = classifier()
    model.train()
    model(torch.randint(0, 17, (32, 8, 8)).float())  # actnorm initialisation
    model.eval()
    (tmp_path / "source").mkdir()
    manifest, files = gated_manifest(model, tmp_path / "source")
    written = save_checkpoint(tmp_path / "ckpt", model, manifest, extra_files=files)
    return tmp_path / "ckpt", model, written


def test_round_trip_gives_identical_outputs(saved):
    path, model, manifest = saved
    loaded = load_checkpoint(path)
    x = torch.randint(0, 17, (5, 8, 8)).float()
    torch.testing.assert_close(loaded.model(x).log_px, model(x).log_px, rtol=0, atol=0)
    torch.testing.assert_close(loaded.model.head.predict(loaded.model(x).z)["probabilities"], model.head.predict(model(x).z)["probabilities"], rtol=0, atol=0)
    assert manifest.format_version == FORMAT_VERSION and len(manifest.version) == 12
    assert set(manifest.files) == {"weights.safetensors", "gate.safetensors"}


def test_reloaded_actnorm_is_not_initialised_again(saved):
    path, model, _ = saved
    loaded = load_checkpoint(path).model.train()
    before = {k: v.clone() for k, v in loaded.state_dict().items()}
    loaded(torch.randint(0, 17, (16, 8, 8)).float() * 0.5)
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, before[key])


def test_changed_byte_is_refused(saved):
    path, _, _ = saved
    weights = path / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        load_checkpoint(path)


def test_unknown_format_version_is_refused(saved):
    path, _, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["format_version"] = 999
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="format version 999.*retrain"):
        load_checkpoint(path)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="manifest.json is missing"):
        load_checkpoint(tmp_path / "nothing")


def test_changed_gate_file_or_missing_gate_section_is_refused(saved):
    path, _, _ = saved
    manifest = json.loads((path / "manifest.json").read_text())
    del manifest["gate"]["combine"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="manifest.json: gate.combine: Field required"):
        load_checkpoint(path)
    manifest["gate"]["combine"], manifest["gate"]["alpha"] = "min", "often"
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match="gate.alpha: Input should be a valid number"):
        load_checkpoint(path)
    (path / "gate.safetensors").write_bytes(b"changed")
    with pytest.raises(CheckpointError, match="gate.safetensors does not match its sha256"):
        load_checkpoint(path)


def test_failed_write_keeps_the_old_checkpoint(saved, monkeypatch):
    path, model, manifest = saved
    monkeypatch.setattr("models.checkpoint.save_file", lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint {path}: No space left on device; the checkpoint there is unchanged"):
        save_checkpoint(path, model, manifest)
    assert load_checkpoint(path).manifest.version == manifest.version
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt", "source"]


def test_any_edited_manifest_field_is_refused_and_the_version_follows_the_digest(saved):
    path, _, written = saved
    original = (path / "manifest.json").read_text()
    manifest = json.loads(original)
    assert written.digest == manifest_digest(manifest) and written.version == written.digest[:12] and written.signature is None
    for edit in (
        lambda m: m["gate"].update(tau=-1e9),
        lambda m: m["gate"].update(alpha=0.5),
        lambda m: m.update(name="other"),
        lambda m: m["preprocessing"].update(levels=256),
        lambda m: m.update(version="0123456789ab"),
    ):
        edited = json.loads(original)
        edit(edited)
        (path / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(CheckpointError, match="manifest.json does not match its digest: it was edited after the checkpoint was written"):
            load_checkpoint(path)
    (path / "manifest.json").write_text(json.dumps(manifest, indent=4))  # layout is not content
    assert load_checkpoint(path).manifest.version == written.version


def test_signed_checkpoints_load_only_with_their_key(saved):
    path, model, written = saved
    with pytest.raises(CheckpointError, match="not signed with the configured key"):
        load_checkpoint(path, signing_key=b"site key")
    signed = sign_checkpoint(path, b"site key")
    assert signed.signature == hmac.new(b"site key", written.digest.encode(), hashlib.sha256).hexdigest()
    assert signed.version == written.version and load_checkpoint(path, signing_key=b"site key").manifest.signature == signed.signature
    assert load_checkpoint(path).manifest.version == written.version  # a signature needs no key to load
    with pytest.raises(CheckpointError, match="not signed with the configured key"):
        load_checkpoint(path, signing_key=b"another key")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["gate"]["tau"] = -1e9
    manifest["digest"] = manifest_digest(manifest)  # re-sealed by hand: the signature no longer matches
    manifest["version"] = manifest["digest"][:12]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert load_checkpoint(path).manifest.gate.tau == -1e9
    with pytest.raises(CheckpointError, match="not signed with the configured key"):
        load_checkpoint(path, signing_key=b"site key")
    resaved = save_checkpoint(path, model, Manifest.model_validate_json((path / "manifest.json").read_text()), extra_files={GATE_FILE: path / GATE_FILE})
    assert resaved.signature is None and resaved.digest != written.digest  # rewriting drops a signature
