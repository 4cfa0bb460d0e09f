"""An exponential moving average of a model's weights, validated and saved in their place when a
recipe asks for it (cfg.ema_decay > 0).

torch.optim.swa_utils.AveragedModel does the same arithmetic but reads its update counter back to
the host (`bool(n_averaged == 0)`) on every step, a GPU wait per step; here the counter lives on the
host and one `_foreach_lerp_` updates every floating tensor. The decay warms up as (1 + t) / (10 + t)
(timm's ModelEmaV3 warm-up), so a short fine-tune of a few hundred steps is not dominated by its
starting weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """`module`: the averaged copy (eval mode, no gradients), updated from `model` after each step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), not {decay}")
        self.decay, self.updates = decay, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self._pair(model)

    def _pair(self, model: nn.Module) -> None:
        pairs = [
            (m.data, t.data)
            for m, t in zip(self.module.state_dict(keep_vars=True).values(), model.state_dict(keep_vars=True).values())
        ]
        floats = [pair for pair in pairs if pair[0].is_floating_point()]
        self._floats = ([m for m, _ in floats], [t for _, t in floats])
        self._others = [pair for pair in pairs if not pair[0].is_floating_point()]

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self._floats[0], self._floats[1], 1 - self.current_decay())
        for mine, theirs in self._others:  # integer buffers (BatchNorm's batch counter): copied
            mine.copy_(theirs)
        self.updates += 1

    def load(self, weights: dict, updates: int) -> None:
        """Resume: the averaged weights and how many updates made them."""
        self.module.load_state_dict(weights)
        self.updates = updates
