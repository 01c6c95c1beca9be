"""One Prometheus exposition for a cluster: the ingress's own metrics and every expert host's, each
host's samples labelled with its ``node``.

Hosts run their own Engine and registry (loads, evictions, tiers, tokens, bytes moved); the ingress
asks each for its text (``ExpertHost.metrics``) when ``/metrics`` is scraped and merges them here, so
one scrape of the endpoint sees the whole cluster. Families of the same name are written once (HELP
and TYPE from the first source that has them), as the text format requires. A host that did not
answer is left out and counted in ``coserve_cluster_hosts_unreachable``.

Pure text in, text out; this module knows nothing about Ray or HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["merge_expositions"]


@dataclass
class _Family:
    kind: str
    help: str
    lines: list[str] = field(default_factory=list)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(number: float) -> str:
    if number != number:
        return "NaN"
    if number in (float("inf"), float("-inf")):
        return "+Inf" if number > 0 else "-Inf"
    return repr(float(number))


def _add(families: dict[str, _Family], text: str, extra: Mapping[str, str]) -> None:
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        merged = families.setdefault(name, _Family(family.type, family.documentation))
        for sample in family.samples:
            labels = {**sample.labels, **extra}
            rendered = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            merged.lines.append(
                f"{sample.name}{{{rendered}}} {_value(sample.value)}"
                if rendered
                else f"{sample.name} {_value(sample.value)}"
            )


def merge_expositions(own: str, hosts: Mapping[str, str | None]) -> str:
    """The ingress's exposition plus each host's (``None``: it did not answer), labelled ``node``."""
    families: dict[str, _Family] = {}
    _add(families, own, {})
    for node, text in sorted(hosts.items()):
        if text is not None:
            _add(families, text, {"node": node})
    unreachable = sum(1 for text in hosts.values() if text is None)
    families["coserve_cluster_hosts_unreachable"] = _Family(
        "gauge",
        "Expert hosts whose metrics did not answer this scrape",
        [f"coserve_cluster_hosts_unreachable {unreachable}.0"],
    )
    out = []
    for name, family in families.items():
        out += [f"# HELP {name} {_escape_help(family.help)}", f"# TYPE {name} {family.kind}", *family.lines]
    return "\n".join(out) + "\n"


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")
