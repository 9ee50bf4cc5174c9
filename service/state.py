"""What the app holds while it runs: settings, the loaded models (``service.loader``), the app's
metrics, readiness, and the single inference thread that keeps model math off the event loop (every
model version's batcher runs its forward passes there, one at a time), the event loop's lag
(``service.loop_lag``) and the decision log."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from service.decision_log import CloudEventsSink, DecisionLog, JsonLinesSink, RecentRejections
from service.metrics import ServiceMetrics
from service.loader import ModelLoader
from service.loop_lag import LoopLag
from service.settings import ServiceSettings


@dataclass
class ServiceState:
    settings: ServiceSettings
    executor: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference"))
    draining: bool = False  # after SIGTERM: readiness is 503, requests are still served

    def __post_init__(self):
        self.models = ModelLoader(self.settings.model_source(), self.settings, self.executor)
        self.loop_lag = LoopLag()  # started with the app
        self.metrics = ServiceMetrics(lambda: [served.metrics for served in self.models.table.loaded()])
        settings = self.settings
        sinks = [] if settings.decision_log_dir is None else [JsonLinesSink(settings.decision_log_dir, settings.decision_log_max_bytes, settings.decision_log_keep)]
        if settings.decision_log_cloudevents_url:
            sinks.append(CloudEventsSink(settings.decision_log_cloudevents_url, settings.decision_log_cloudevents_timeout_s))
        self.decisions = DecisionLog(
            sinks, self.metrics.registry, settings.decision_log_queue, settings.decision_log_sample, settings.decision_log_rejected_sample,
            settings.decision_log_inputs, settings.decision_log_input_sample, recent=RecentRejections(settings.recent_rejections) if settings.recent_rejections else None,
        )

    @property
    def ready(self) -> bool:
        """Start-up done: every model loaded and warmed up (tests and benchmarks wait on this)."""
        return self.models.started

    def begin_drain(self) -> None:
        """Readiness (route and gauges) turns 503 / 0 so load balancers stop sending; predictions go on."""
        self.draining = True
        for served in self.models.table.loaded():
            served.stop_accepting()

    @property
    def accepting(self) -> bool:
        """What readiness reports: started and not draining."""
        return self.models.started and not self.draining

    def not_ready_reason(self) -> str:
        return "draining before shutdown" if self.draining else self.models.load_error or "models are loading"
