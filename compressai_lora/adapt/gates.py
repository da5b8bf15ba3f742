"""Gate networks that decide which adapted layers carry an update.

Per adapted layer (Lv et al., ACM MM 2023): conv stride 2 -> ReLU -> global
average pool -> 1x1 conv to 2 logits -> hard decision with a straight-through
estimator.  They run only in the encoder; the decoder gets one bit per layer.

Every parameter is drawn from the generator passed in: building a gate never
touches torch's global RNG, whose start seed differs from process to process,
so the same seed gives the same gates (and the same bytes) in every process.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ["GateNetwork", "init_gates"]


class GateNetwork(nn.Module):
    """Gate of one layer.

    Args:
        in_channels: channels of the adapted layer's input
        hidden: channels of the strided conv
        open_bias: initial logit margin in favour of "open"; the update starts
            at zero, so an open gate costs only the (cheap) zero factors and
            the RD gradient decides whether it stays open
        generator: source of the initial weights (None: torch's global RNG)
        device: where the parameters live
    """

    def __init__(
        self,
        in_channels: int,
        hidden: int = 16,
        open_bias: float = 2.0,
        generator: Optional[torch.Generator] = None,
        device=None,
    ):
        super().__init__()
        # built on the meta device: nn.Conv2d's own init would draw from the
        # global RNG; reset_parameters draws from ``generator`` instead
        self.conv = nn.Conv2d(
            in_channels, hidden, 3, stride=2, padding=1, device="meta"
        )
        self.head = nn.Conv2d(hidden, 2, 1, device="meta")
        self.open_bias = open_bias
        self.to_empty(device=device or "cpu")
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: Optional[torch.Generator] = None) -> None:
        """PyTorch's default conv init (uniform in +-1/sqrt(fan_in)), drawn
        from ``generator``; the head starts small and biased towards open."""
        for conv in (self.conv, self.head):
            bound = 1.0 / (conv.weight[0].numel() ** 0.5)
            for p in (conv.weight, conv.bias):
                u = torch.rand(p.shape, generator=generator, dtype=p.dtype)
                p.copy_(u * 2 * bound - bound)
        self.head.weight.mul_(0.1)
        self.head.bias.copy_(torch.tensor([0.0, self.open_bias]))

    def logits(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x)).mean(dim=(2, 3), keepdim=True)
        return self.head(h).flatten(1).mean(0)  # one decision per image

    def forward(self, x: Tensor) -> Tensor:
        """Hard gate in {0, 1} with the softmax probability's gradient."""
        p_open = torch.softmax(self.logits(x), dim=0)[1]
        hard = (p_open > 0.5).to(p_open)
        return hard + p_open - p_open.detach()


def init_gates(
    in_channels: list[int], generator: Optional[torch.Generator], device
) -> list[GateNetwork]:
    """Seeded gate networks, one per adapted layer."""
    return [GateNetwork(c, generator=generator, device=device) for c in in_channels]
