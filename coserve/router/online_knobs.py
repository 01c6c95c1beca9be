"""The keyword arguments of ``OnlineRouter`` that a ``router.online`` section (``OnlineSettings``) describes.

One translation from the settings (the server's and ``coserve bench adapt``'s, whose tuned defaults live
in ``OnlineSettings`` only) to the router's constructor, so both build the same router.

Knows nothing about routing itself, HTTP or the store.
"""

from __future__ import annotations

from typing import Any

from coserve.config_routing import OnlineSettings
from coserve.router.drift import ChangeSettings
from coserve.router.online_confirm import ConfirmSettings
from coserve.router.online_kg import KGSettings
from coserve.router.online_probe import ProbeSettings

__all__ = ["router_options"]


def router_options(settings: OnlineSettings) -> dict[str, Any]:
    """``OnlineRouter``'s keyword arguments for ``settings`` (no change detector at threshold 0)."""
    change = None
    if settings.change_threshold > 0:
        change = ChangeSettings(
            settings.change_drift, settings.change_threshold, settings.reset_count, settings.move_mean,
            settings.change_baseline, settings.change_min_feedback, settings.change_upward,
            settings.change_shift_share, settings.change_model, settings.change_variance_floor,
            settings.change_reference, settings.change_reference_memory, settings.change_anchor,
            settings.change_fast_drift, settings.change_fast_threshold, settings.change_shift_pool,
        )  # fmt: skip
    return {
        "prior_strength": settings.prior_strength,
        "max_count": max(settings.max_count, settings.prior_strength),
        "step": settings.step,
        "explore_cap": settings.explore_cap,
        "window": settings.window,
        "signals": frozenset(settings.signals),
        "change": change,
        "mix_window": settings.mix_window,
        "granularity": settings.granularity,
        "prompt_weight": settings.prompt_weight,
        "expert_rate": settings.expert_rate,
        "mix_jump": settings.mix_jump,
        "mix_short": settings.mix_short,
        "refresh_on_alarm": settings.refresh_on_alarm,
        "underspend_debt": settings.underspend_debt,
        "fine_weight": settings.fine_weight,
        "explore_at_zero": settings.explore_at_zero,
        "weight_floor": settings.weight_floor,
        "alarm_explore": settings.alarm_explore,
        "alarm_explore_any_weight": settings.alarm_explore_any_weight,
        # any weight widens the re-test past a collapse: the default gate gives way to it (config_routing)
        "alarm_explore_underspend": 0.0 if settings.alarm_explore_any_weight else settings.alarm_explore_underspend,
        "alarm_revert": settings.alarm_revert,
        "alarm_revert_share": settings.alarm_revert_share,
        "neighbours": settings.neighbours,
        "probe": ProbeSettings(
            settings.change_probe,
            settings.change_probe_requests,
            settings.change_probe_margin,
            settings.change_probe_starved,
        ),
        "confirm": ConfirmSettings(
            settings.change_confirm,
            settings.change_confirm_requests,
            settings.change_confirm_sd,
            settings.change_confirm_error,
        ),
        "kg": KGSettings(settings.explore_policy == "kg", settings.kg_horizon, settings.kg_settle),
    }
