"""Service settings from environment variables (prefix ``DIGLM_``) and the command line, both
parsed and validated by pydantic-settings (``parse_settings``). An unknown ``DIGLM_*`` variable is
an error, so a misspelt setting never goes unnoticed."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, CliApp, NoDecode, SettingsConfigDict, SettingsError

from models.validation import validation_message
from service.repository import ModelSource, parse_policies

ENV_PREFIX = "DIGLM_"


class SettingsProblem(ValueError):
    """A setting from the environment or the command line is unknown or invalid (one line)."""


class ServiceSettings(BaseSettings):
    """Serve a DIGLM checkpoint over HTTP (KServe v1 and Open Inference Protocol v2) and gRPC (Open
    Inference Protocol). Every option
    is also an environment variable DIGLM_<OPTION>, e.g. DIGLM_MODEL_DIR; flags win."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, extra="forbid", protected_namespaces=(), cli_kebab_case=True, cli_prog_name="python -m service",
        cli_use_class_docs_for_groups=False,
    )

    model_dir: Path = Field(Path("artifacts/digits"), description="checkpoint folder to serve (a repository of one model and one version)")
    model_repository: Path | None = Field(
        None, description="serve a model repository instead: DIR/<name>/<version>/ checkpoint folders (the Triton / KServe layout; versions are positive integers)"
    )
    version_policy: Annotated[list[str], NoDecode] = Field(
        [], description="versions to serve: latest (the default), latest:N, all, or pinned versions 1,3; NAME=POLICY for one model; entries separated by ;"
    )
    max_loaded_versions: int = Field(8, ge=1, description="most model versions loaded at once (memory); a load past it is refused with 409")
    repository_poll_s: float | None = Field(None, gt=0, description="check the models' folders this often (seconds) and load new, changed or removed versions; default: only on the load API")
    host: str = Field("127.0.0.1", description="address to listen on")
    port: int = Field(8000, ge=1, le=65535, description="port to listen on")
    grpc_port: int = Field(8081, ge=0, le=65535, description="port of the gRPC server (Open Inference Protocol, same models and batches as REST); 0: no gRPC")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present")
    backend: Literal["torch", "onnx", "auto"] = Field("auto", description="inference runtime; auto: onnx where the checkpoint has model.onnx, else torch (a rule, so replicas agree)")
    max_instances: int = Field(1024, ge=1, description="most instances in one request")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="largest request body (413 above), and largest gRPC message (RESOURCE_EXHAUSTED above)")
    inference_threads: int | None = Field(
        None, ge=1, description="CPU threads for model math; default: torch the usable CPUs minus one (its idle threads spin), ONNX Runtime all (row ranges of a batch run at once, one thread each: docs/gate.md)"
    )
    batching: bool = Field(True, description="gather concurrent requests into one forward pass")
    max_batch_size: int = Field(64, ge=1, description="most instances in one batched forward pass")
    max_delay_ms: float = Field(0.0, ge=0, description="hold a batch open this long while requests arrive concurrently")
    max_queue: int = Field(4096, ge=1, description="most queued instances before answering 503")
    drift_window: int = Field(1000, ge=10, description="served instances in the drift monitor's sliding window (see service.drift)")
    drift_threshold: float = Field(1e-4, gt=0, lt=1, description="drift is declared when the window's combined drift p-value is below this (it bounds the false-alarm rate per clean full window)")
    request_timeout_s: float = Field(5.0, gt=0, description="a prediction not answered in this many seconds is a 504 and its queued work is dropped")
    max_queue_wait_s: float = Field(
        1.0, gt=0,
        description="a request whose expected wait (the event loop's lag plus the instances queued ahead) is longer gets 503 with Retry-After at once, before it is read; at most request_timeout_s",
    )
    header_timeout_s: float = Field(10.0, gt=0, description="a connection whose request headers have not all arrived this many seconds after it opened is closed (slow clients)")
    keep_alive_timeout_s: float = Field(5.0, gt=0, description="idle keep-alive connections are closed after this many seconds")
    max_connections: int | None = Field(None, ge=1, description="concurrent connections; beyond them new requests get 503 (default: no limit)")
    backlog: int = Field(4096, ge=1, description="connections waiting to be accepted (the kernel caps it at net.core.somaxconn); a burst of more is dropped and retried by the clients' TCP")
    warmup_batch: int = Field(8, ge=1, description="instances in the warm-up batch run before reporting ready")
    shutdown_delay_s: float = Field(
        2.0, ge=0, description="after SIGTERM: readiness answers 503 at once, requests are still served this long (load balancers stop sending), then the drain"
    )
    drain_timeout_s: float = Field(30.0, gt=0, description="after the delay: most seconds for queued and in-flight requests to finish before exit")
    api_keys: Annotated[list[str], NoDecode] = Field(
        [], description="API keys clients must send (Authorization: Bearer KEY or X-API-Key); comma-separated in DIGLM_API_KEYS; none: no authentication"
    )
    api_keys_file: Path | None = Field(None, description="file with more API keys, one per line (# comments)")
    admin_api_keys: Annotated[list[str], NoDecode] = Field(
        [], description="keys for the model repository routes (/v2/repository/...: index, load, unload) and everything else; with API keys but no admin keys those routes are refused (403)"
    )
    admin_api_keys_file: Path | None = Field(None, description="file with more admin API keys, one per line (# comments)")
    signing_key_file: Path | None = Field(None, description="refuse checkpoints not signed with the key in this file (python -m training sign)")
    metrics_require_key: bool = Field(False, description="with API keys, /metrics needs one too")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field("info", description="logging level of the service and uvicorn")
    decision_log_dir: Path | None = Field(None, description="write the decision log here: JSON Lines, one record per served instance (service.decision_log); default: no log")
    decision_log_cloudevents_url: str | None = Field(
        None, description="also POST each decision record as a CloudEvent (structured mode) to this URL: a Knative broker, a Kafka bridge; default: none"
    )
    decision_log_cloudevents_timeout_s: float = Field(2.0, gt=0, description="a CloudEvents POST not answered in this many seconds fails (its records are dropped and counted)")
    decision_log_sample: float = Field(1.0, ge=0, le=1, description="share of the accepted instances logged")
    decision_log_rejected_sample: float = Field(1.0, ge=0, le=1, description="share of the rejected instances logged")
    decision_log_inputs: Literal["never", "rejected", "sampled"] = Field(
        "never", description="which logged records carry their input: never, rejected (the rejected ones), sampled (the rejected ones and decision-log-input-sample of the accepted)"
    )
    decision_log_input_sample: float = Field(0.01, ge=0, le=1, description="with decision-log-inputs sampled: share of the logged accepted instances that carry their input")
    decision_log_max_bytes: int = Field(64 * 1024 * 1024, ge=4096, description="the log file is rotated past this size")
    decision_log_keep: int = Field(10, ge=1, description="rotated log files kept (the oldest are deleted)")
    recent_rejections: int = Field(100, ge=0, description="rejected instances kept in memory, with their inputs, for GET /v2/models/{name}/rejections; 0: none")
    decision_log_queue: int = Field(10_000, ge=1, description="answered requests queued for the decision log, and records queued per sink; past either, records are dropped and counted")

    @property
    def admission_limit_s(self) -> float:
        """The longest expected wait a request is admitted with (``max_queue_wait_s``, at most the
        request timeout): past it, 503 with Retry-After (``service.batching``, ``service.shedding``)."""
        return min(self.max_queue_wait_s, self.request_timeout_s)

    @field_validator("api_keys", "admin_api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value):
        return [key.strip() for key in value.split(",") if key.strip()] if isinstance(value, str) else value

    @field_validator("version_policy", mode="before")
    @classmethod
    def _split_policies(cls, value):
        return [entry.strip() for entry in value.split(";") if entry.strip()] if isinstance(value, str) else value

    @field_validator("version_policy")
    @classmethod
    def _valid_policies(cls, entries: list[str]) -> list[str]:
        parse_policies(entries)
        return entries

    @field_validator("api_keys_file", "admin_api_keys_file", "signing_key_file")
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path

    def signing_key(self) -> bytes | None:
        return self.signing_key_file.read_bytes().strip() if self.signing_key_file else None

    def all_api_keys(self) -> list[str]:
        """``api_keys`` and the lines of ``api_keys_file``."""
        return _keys(self.api_keys, self.api_keys_file)

    def all_admin_api_keys(self) -> list[str]:
        """``admin_api_keys`` and the lines of ``admin_api_keys_file``."""
        return _keys(self.admin_api_keys, self.admin_api_keys_file)

    def model_source(self) -> ModelSource:
        """The repository, or else the one checkpoint folder."""
        return ModelSource(repository=self.model_repository) if self.model_repository else ModelSource(checkpoint=self.model_dir)

    @model_validator(mode="after")
    def _no_unknown_variables(self) -> "ServiceSettings":
        unknown = unknown_variables(os.environ)
        if unknown:
            raise ValueError(f"unknown environment variable {unknown[0]}; settings are {', '.join(known_variables())}")
        if self.model_repository is not None and "model_dir" in self.model_fields_set:
            raise ValueError("give --model-dir or --model-repository, not both")
        return self


def _keys(keys: list[str], file: Path | None) -> list[str]:
    """``keys`` and the lines of ``file`` (blank lines and # comments skipped)."""
    lines = file.read_text().splitlines() if file else []
    return [*keys, *(line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#"))]


def known_variables() -> list[str]:
    """Every ``DIGLM_*`` environment variable the service reads."""
    return [ENV_PREFIX + name.upper() for name in ServiceSettings.model_fields]


def unknown_variables(environ) -> list[str]:
    known = set(known_variables())
    return sorted(name for name in environ if name.upper().startswith(ENV_PREFIX) and name.upper() not in known)


def parse_settings(argv: list[str] | None = None) -> ServiceSettings:
    """Settings from the environment and ``argv`` (flags such as ``--model-dir``); a
    ``SettingsProblem`` with one line for anything unknown or invalid."""
    try:
        return CliApp.run(ServiceSettings, cli_args=argv or [])
    except ValidationError as error:
        raise SettingsProblem(validation_message(error.errors(), "settings")) from None
    except SettingsError as error:
        raise SettingsProblem(str(error).splitlines()[0]) from None
