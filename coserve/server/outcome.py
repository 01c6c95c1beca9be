"""The end of a chat request: the one place it is accounted for.

``Outcomes.settle(status, call)`` runs exactly once per chat request, however it ends (answered,
refused, failed, client gone, stream broken): it releases the request's admission, spends its
tokens against its API key's quota, counts it in the metrics (``coserve_requests_total`` by
status, latency, time to first token) and writes its row in the decision log (routed requests
only), and offers its event to the live decision feed (coserve.server.feed, the dashboard's; it
never blocks). A request refused before it was parsed has no Call yet and is only counted.

This module knows nothing about HTTP, routing or how responses are written.
"""

from __future__ import annotations

import json
import time

from coserve.engine.call import Call
from coserve.metrics import Metrics
from coserve.server.admission import Admission
from coserve.server.feed import DecisionFeed
from coserve.server.quota import KeyQuota
from coserve.store.log import DecisionRow, DecisionStore
from coserve.store.predicted import encode_prediction

__all__ = ["Outcomes"]


class Outcomes:
    """Settles chat requests: admission released, quota spent, metrics counted, decision logged."""

    def __init__(
        self,
        admission: Admission,
        quota: KeyQuota,
        metrics: Metrics,
        decisions: DecisionStore,
        feed: DecisionFeed | None = None,
    ):
        self.admission = admission
        self.quota = quota
        self.metrics = metrics
        self.decisions = decisions
        self.feed = feed if feed is not None else DecisionFeed()

    def settle(self, status: str, call: Call | None = None, completion: str | None = None) -> None:
        """Account for one ended chat request (a second settle of the same Call does nothing)."""
        if call is None:
            self.metrics.requests.labels(status).inc()
            return
        if call.timings.finished is not None:
            return
        call.timings.finished, call.status = time.monotonic(), status
        self.admission.release(call)
        if call.key is not None and call.usage is not None:
            self.quota.spend(call.key, call.usage.total_tokens)
        self.metrics.requests.labels(status).inc()
        answered = call.timings.first_token is not None and call.expert is not None
        if answered and status != "499":
            self.metrics.latency_seconds.labels(call.expert).observe(call.elapsed())
        if answered and call.request.stream and call.timings.first_token is not None:
            self.metrics.ttft_seconds.labels(call.expert).observe(call.timings.first_token - call.timings.arrival)
        if call.decision is not None:
            self.decisions.record(self._row(call, completion))
            self.feed.publish(call)

    def _row(self, call: Call, completion: str | None) -> DecisionRow:
        decision = call.decision
        assert decision is not None
        answered = call.timings.first_token is not None
        prompt = None
        if self.decisions.store_text:
            prompt = json.dumps([{"role": m.role, "content": m.content} for m in call.request.messages])
        usage = call.usage
        return DecisionRow(
            id=call.id,
            time=time.time() - (time.monotonic() - call.timings.arrival),
            model=call.request.model,
            expert=(call.expert if answered and call.expert else decision.expert),
            category=decision.category,
            confidence=decision.confidence,
            reason=decision.reason,
            fallback_from=",".join(call.tried) if answered and call.tried else None,
            status=call.status,
            latency_s=call.elapsed(),
            prompt_tokens=usage.prompt_tokens if usage else None,
            completion_tokens=usage.completion_tokens if usage else None,
            map_version=decision.map_version,
            cascade=json.dumps([step.as_dict() for step in call.steps]) if call.steps else None,
            predicted=encode_prediction(decision.predicted),
            prompt=prompt,
            completion=completion if self.decisions.store_text else None,
        )
