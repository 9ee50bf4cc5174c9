"""Service settings from environment variables (prefix ``DIGLM_``) or the command line."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIGLM_", extra="ignore", protected_namespaces=())

    model_dir: Path = Field(Path("artifacts/digits"), description="checkpoint folder to serve")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["torch", "onnx", "auto"] = Field("auto", description="inference runtime; auto: the faster on a warm-up measurement (torch when the checkpoint has no model.onnx)")
    max_instances: int = Field(1024, ge=1, description="most instances in one request")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body (413 above)")
    inference_threads: int | None = Field(
        None, ge=1, description="CPU threads for model math; default: torch the usable CPUs minus one (its idle threads spin), ONNX Runtime all of them (spinning off)"
    )
    batching: bool = Field(True, description="gather concurrent requests into one forward pass")
    max_batch_size: int = Field(64, ge=1, description="most instances in one batched forward pass")
    max_delay_ms: float = Field(0.0, ge=0, description="hold a batch open this long while requests arrive concurrently")
    max_queue: int = Field(4096, ge=1, description="most queued instances before answering 503")
    warmup_batch: int = Field(8, ge=1, description="instances in the warm-up batch run before reporting ready")
    log_level: str = "info"
