"""The weights of a stage's best validation, restored when the stage ends."""

from __future__ import annotations

import math

from torch import Tensor, nn


class BestWeights:
    """The modules' weights at the best validation seen in a stage.

    The audio model overfits a few minutes of one speaker (Obama, small preset: validation error
    0.76 at step 150, 0.83 at step 900), and a GAN-trained renderer can drift between
    validations, so every stage ends with its best validated weights. Only the main process
    validates; the other ranks never use a stage's weights after it without the main process's
    bundle. After a resume, only validations since the resume are compared.

    Args:
        modules: what the stage trains, by name.
        higher_is_better: True for SSIM, False for an error.
    """

    def __init__(self, modules: dict[str, nn.Module], higher_is_better: bool) -> None:
        self.modules = modules
        self.higher_is_better = higher_is_better
        self.step = -1
        self.value = math.nan
        self.state: dict[str, dict[str, Tensor]] | None = None

    def offer(self, step: int, value: float) -> bool:
        """Keep the weights if ``value`` is the best so far; returns whether it was."""
        if math.isnan(value):
            return False
        better = math.isnan(self.value) or (
            value > self.value if self.higher_is_better else value < self.value
        )
        if better:
            self.step, self.value = step, value
            self.state = {
                name: {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                for name, module in self.modules.items()
            }
        return better

    def restore(self, last_step: int) -> bool:
        """Load the best weights if they are not the last ones; returns whether it did."""
        if self.state is None or self.step == last_step:
            return False
        for name, module in self.modules.items():
            module.load_state_dict(self.state[name])
        return True
