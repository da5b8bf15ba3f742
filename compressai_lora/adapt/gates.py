"""Gate networks that decide which adapted layers carry an update.

Per adapted layer (Lv et al., ACM MM 2023): conv stride 2 -> ReLU -> global
average pool -> 1x1 conv to 2 logits -> hard decision with a straight-through
estimator.  They run only in the encoder; the decoder gets one bit per layer.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["GateNetwork"]


class GateNetwork(nn.Module):
    """Gate of one layer.

    Args:
        in_channels: channels of the adapted layer's input
        hidden: channels of the strided conv
        open_bias: initial logit margin in favour of "open"; the update starts
            at zero, so an open gate costs only the (cheap) zero factors and
            the RD gradient decides whether it stays open
    """

    def __init__(self, in_channels: int, hidden: int = 16, open_bias: float = 2.0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, hidden, 3, stride=2, padding=1)
        self.head = nn.Conv2d(hidden, 2, 1)
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.copy_(torch.tensor([0.0, open_bias]))

    def logits(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3), keepdim=True)
        return self.head(h).flatten(1).mean(0)  # one decision per image

    def forward(self, x: Tensor) -> Tensor:
        """Hard gate in {0, 1} with the softmax probability's gradient."""
        p_open = torch.softmax(self.logits(x), dim=0)[1]
        hard = (p_open > 0.5).to(p_open)
        return hard + p_open - p_open.detach()

    @torch.no_grad()
    def decide(self, x: Tensor) -> bool:
        return bool(self.forward(x) > 0.5)


def init_gates(
    in_channels: list[int], generator: Optional[torch.Generator], device
) -> list[GateNetwork]:
    """Seeded gate networks, one per adapted layer."""
    gates = []
    for c in in_channels:
        g = GateNetwork(c)
        with torch.no_grad():
            for p in g.parameters():
                if p.dim() > 1:
                    bound = 1.0 / max(p[0].numel(), 1) ** 0.5
                    p.copy_(
                        torch.rand(p.shape, generator=generator) * 2 * bound - bound
                    )
            g.head.weight.mul_(0.1)
        gates.append(g.to(device))
    return gates
