"""Shadow feedback: a share of requests also answered, unseen by the user, by a second expert that is judged.

The stream's feedback scores only the chosen expert, so a cell the prior underrates is learnt only by sending
users to it, and a false drop of a cheap good expert is seldom undone. A shadow answer is paid for in compute
instead: for a share ``share`` of requests (a uniform draw below it) a second expert answers too, and its judged
score is fed back. The second expert is the argmax, among the allowed experts other than the chosen one, of a
Thompson draw of the request's posteriors (in prompt mode plus the prompt's shift from its category, as
``OnlineChoice._choose`` builds its draw) less the map's cost weight times the scaled cost. Every draw comes from
the pick's own generator, seeded ``[seed, 21]``, so the router's own stream of draws is untouched.
With ``detected`` false (the replay's ``shadow_detected``) a shadow's score teaches its cell but never reaches
the change detector. The router's owner sets ``OnlineRouter.shadow``; only the replay (``coserve bench adapt
--shadow``) does: the server has no judge. Pure numbers, seeded randomness.
"""

from __future__ import annotations

import numpy as np

from coserve.router.online_map import MapSnapshot
from coserve.router.online_model import ScorePosterior

__all__ = ["MAX_SHARE", "ShadowPick"]

MAX_SHARE = 0.2  # the most share of requests that may be shadowed


class ShadowPick:
    """Which requests get a shadow answer, and from which expert."""

    def __init__(self, share: float, seed: int = 0, detected: bool = True) -> None:
        if not 0.0 <= share <= MAX_SHARE:
            raise ValueError(f"shadow share {share}: must be in [0, {MAX_SHARE}]")
        self.share = float(share)
        self.rng = np.random.default_rng([int(seed), 21])
        self.picked = 0  # requests given a shadow
        self.detected = bool(detected)  # false: a shadow's score teaches the posterior only, not the change detector

    def pick(
        self,
        posterior: ScorePosterior,
        snap: MapSnapshot,
        scaled_cost: np.ndarray,
        category: int,
        chosen: int,
        mask: np.ndarray | None = None,
        shift: np.ndarray | float = 0.0,
    ) -> int | None:
        """The shadow expert for a request of ``category`` answered by ``chosen`` (None: no shadow, or no other
        expert allowed); ``shift`` is the prompt's offset from its category ([E], prompt mode) or 0."""
        if self.rng.random() >= self.share:
            return None
        others = np.ones(len(scaled_cost), dtype=bool) if mask is None else np.asarray(mask, dtype=bool).copy()
        others[chosen] = False
        if not others.any():
            return None
        objective = posterior.sample(category, self.rng) + shift - snap.weight * scaled_cost
        self.picked += 1
        return int(np.argmax(np.where(others, objective, -np.inf)))
