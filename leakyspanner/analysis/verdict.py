"""What a diagnosis returns: plain dataclasses, JSON-ready through ``to_dict``.

Kept apart from the statistics in ``diagnose.py`` so the CLI, notebooks and
web UI can read a verdict without caring how it was computed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .jsonvalue import json_value

__all__ = [
    "EndpointAttribution",
    "FixCheck",
    "GrowingSite",
    "LeakKind",
    "Trend",
    "TrendStatus",
    "Verdict",
    "VerdictStatus",
]

#: How one memory metric moves after warm-up (``Trend.status``); a steady one is "flat".
TrendStatus = Literal["leaking", "plateau", "sawtooth", "flat", "not enough data"]
#: What a session's diagnosis concludes (``Verdict.status``); a steady session is "no leak".
VerdictStatus = Literal["leaking", "possible leak", "plateau", "sawtooth", "no leak", "not enough data"]


class _Dict:
    def to_dict(self) -> dict[str, Any]:
        return json_value(asdict(self))  # type: ignore[call-overload, no-any-return]


@dataclass
class Trend(_Dict):
    """Robust growth of one memory metric after warm-up."""

    metric: str                      # "rss_bytes" or "traced_bytes"
    status: TrendStatus
    slope_bytes_per_s: float         # Theil-Sen slope after warm-up
    slope_low_bytes_per_s: float     # 90% confidence band of the slope
    slope_high_bytes_per_s: float
    confidence: float                # 0..1: how sure the growth is real (not noise)
    mb_per_hour: float
    bytes_per_1k_requests: float | None
    warmup_s: float                  # seconds ignored at the start
    samples: int
    start_bytes: float
    end_bytes: float


@dataclass
class EndpointAttribution(_Dict):
    """Bytes each call of an endpoint leaves behind, estimated from growth per interval."""

    method: str
    route: str
    calls: int
    retained_bytes_per_call: float   # non-negative least squares estimate
    low_bytes_per_call: float        # bootstrap 90% interval
    high_bytes_per_call: float
    naive_avg_delta_bytes: float     # mean of per-request RSS deltas (what 0.1.x reported)
    share_of_growth: float           # fraction of the explained growth
    significant: bool                # interval excludes zero and the estimate is material
    #: what the estimate comes from: "tagged heap samples" (the endpoint's own sampled
    #: allocations), "request RSS deltas", "regression on calls" or "site in endpoint code"
    evidence: str = "regression on calls"
    #: from tagged samples: the live Python bytes each call keeps, before they are scaled to
    #: RSS (``retained_bytes_per_call``) by how much RSS grew per byte of live heap
    heap_bytes_per_call: float | None = None


@dataclass
class GrowingSite(_Dict):
    """A tracemalloc site whose size keeps growing across snapshots."""

    site: str                        # "file:line"
    file: str
    line: int
    first_size_bytes: int
    last_size_bytes: int
    growth_bytes: int
    growth_per_snapshot_bytes: float
    growth_per_hour_bytes: float
    rising_fraction: float           # share of consecutive snapshots where it grew
    count_growth: int
    bytes_per_call: float | None     # growth / calls of the suspect endpoint in the same window
    per_call_route: str | None
    function: str | None = None      # the allocating function, when the engine records it
    app_site: str | None = None      # first frame in application code ("caused by"), when known
    evidence: str = "tracemalloc"    # "tagged heap samples" or "tracemalloc"


@dataclass
class LeakKind(_Dict):
    """One kind of leak the evidence points at, with what usually fixes it."""

    kind: str                        # "python_heap" | "native" | "asyncio_tasks" | "file_descriptors" | "threads" | "gc_uncollectable"
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)
    remedies: list[str] = field(default_factory=list)


@dataclass
class Verdict(_Dict):
    """The answer for one session: is it leaking, where, how much, what kind."""

    session_id: str
    status: VerdictStatus
    leaking: bool
    headline: str                    # one plain sentence
    rss: Trend
    traced: Trend | None
    endpoints: list[EndpointAttribution]
    sites: list[GrowingSite]
    kinds: list[LeakKind]
    requests: int
    duration_s: float
    notes: list[str] = field(default_factory=list)
    #: which evidence named the suspect ("tagged heap samples", "request RSS deltas",
    #: "site in endpoint code", "regression on calls") or "" when none was named
    attribution: str = ""
    #: "high" | "medium" | "low": how far the evidence goes; ``confidence_reasons`` says why
    confidence: str = "low"
    confidence_reasons: list[str] = field(default_factory=list)

    @property
    def suspect(self) -> EndpointAttribution | None:
        """The endpoint most likely responsible, when one stands out."""
        return next((e for e in self.endpoints if e.significant), None)


@dataclass
class FixCheck(_Dict):
    """Before against after: did the growth go away?"""

    before: str                      # session ids or window labels
    after: str
    fixed: bool
    headline: str
    before_mb_per_hour: float
    after_mb_per_hour: float
    before_status: VerdictStatus
    after_status: VerdictStatus
    endpoints: list[dict[str, Any]]  # route, before/after retained_bytes_per_call
    #: "FIXED" | "NOT FIXED" | "REGRESSION" | "NO CHANGE": the one label the terminal and
    #: the dashboard print, so they cannot disagree
    outcome: str = ""
