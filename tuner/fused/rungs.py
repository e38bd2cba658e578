"""ASHA's stop/continue rule, for fused members as for trials: one record of scores per rung, shared by both.

The same rule and bookkeeping as Ray Tune 2.60's `AsyncHyperBandScheduler` with one bracket (what
`tuner.search` builds for `scheduler: asha`), reimplemented because Ray's scheduler decides per Ray
trial and a fused group is one Ray trial holding many configurations:

- rungs at grace_period * rf^k epochs, k = 0 .. int(log(max_t / grace_period) / log(rf));
- a result at an epoch >= max_t stops (and is not recorded: a completion records it, as Ray's
  `on_trial_complete` does);
- otherwise, the highest rung at or below the epoch that this key has not yet been recorded at decides:
  stop when the score is below the (1 - 1/rf) quantile (`np.nanpercentile`) of the scores already
  recorded there, then record it; a key recorded at that rung already is neither judged nor recorded;
- scores are negated for mode "min", so "below" always means worse.

The driver must feed it results in the order they arrive, and call `complete` when a member or trial
ends (stopped, early-stopped, failed with a last result, or finished), as Ray does.
"""
from __future__ import annotations

import warnings

import numpy as np


class Rungs:
    """The recorded scores of every trial and member at each rung, and the decisions made from them."""

    def __init__(self, grace_period: int, max_t: int, reduction_factor: float, mode: str = "max"):
        # Ray's own checks (AsyncHyperBandScheduler.__init__)
        if not (max_t > 0 and grace_period > 0 and max_t >= grace_period and reduction_factor > 1):
            raise ValueError("need 0 < grace_period <= max_t and reduction_factor > 1")
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.grace_period, self.max_t, self.rf, self.mode = grace_period, max_t, reduction_factor, mode
        count = int(np.log(max_t / grace_period) / np.log(reduction_factor) - 0 + 1)  # Ray's MAX_RUNGS, s = 0
        self.rungs: list[tuple[float, dict[str, float]]] = [
            (grace_period * reduction_factor ** k, {}) for k in reversed(range(count))]

    def _reward(self, score: float) -> float:
        return score if self.mode == "max" else -score

    def cutoff(self, recorded: dict[str, float]) -> float | None:
        if not recorded:
            return None
        with warnings.catch_warnings():  # all-NaN rungs: Ray gets nan (and a warning) too
            warnings.simplefilter("ignore", RuntimeWarning)
            return float(np.nanpercentile(list(recorded.values()), (1 - 1 / self.rf) * 100))

    def report(self, key: str, epoch: int, score: float | None) -> bool:
        """A result of `key` (a trial or member id) after `epoch` epochs: True to stop it. A missing score
        (None) decides nothing, as a result without the metric does in Ray."""
        if score is None:
            return False
        if epoch >= self.max_t:
            return True
        return self._record(key, epoch, self._reward(score))

    def complete(self, key: str, epoch: int, score: float | None) -> None:
        """`key` ended with this last result (Ray's `on_trial_complete`): record it where not yet recorded."""
        if score is not None:
            self._record(key, epoch, self._reward(score))

    def decide(self, results: list[tuple[str, int, float | None, bool]]) -> list[bool]:
        """A fused group's epoch in one call (one round trip to the driver's actor, not one or two per member):
        for each (key, epoch, score, done) in order, `report`, then `complete` when the member ends (done, or
        stopped here). True where the rule stopped a member that had not finished."""
        stopped = []
        for key, epoch, score, done in results:
            stop = self.report(key, epoch, score) and not done  # at max_epochs the rule says stop: it finished
            if stop or done:
                self.complete(key, epoch, score)
            stopped.append(stop)
        return stopped

    def _record(self, key: str, epoch: int, reward: float) -> bool:
        for milestone, recorded in self.rungs:
            if epoch < milestone or key in recorded:
                continue
            cutoff = self.cutoff(recorded)
            stop = cutoff is not None and reward < cutoff  # a NaN reward or cutoff compares False: it goes on
            recorded[key] = reward
            return stop
        return False

    # --------------------------------------------------------------------------- persistence
    def state_dict(self) -> dict:
        """Plain data (JSON-safe but for NaN): what a resumed search restores with `load_state_dict`."""
        return {"rungs": [[milestone, dict(recorded)] for milestone, recorded in self.rungs]}

    def load_state_dict(self, state: dict) -> None:
        saved = {float(m): r for m, r in state["rungs"]}
        for milestone, recorded in self.rungs:
            recorded.clear()
            recorded.update({k: float(v) for k, v in saved.get(float(milestone), {}).items()})

