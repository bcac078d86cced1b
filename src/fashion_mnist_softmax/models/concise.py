"""The chapter's concise implementation: ``nn.Linear``, ``nn.CrossEntropyLoss`` and ``torch.optim``."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fashion_mnist_softmax.models.classifier import Classifier


class ConciseSoftmaxRegression(Classifier):
    """``nn.Sequential(nn.Flatten(), nn.Linear(784, 10))`` trained with any ``torch.optim`` optimizer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        num_inputs, num_outputs = self.hparams.num_inputs, self.hparams.num_outputs
        # skip nn.Linear's own random init: the chapter's init below then draws from the same RNG
        # state as the scratch model's, so one seed gives both models one starting point
        linear = nn.utils.skip_init(nn.Linear, num_inputs, num_outputs)
        nn.init.normal_(linear.weight, mean=0.0, std=0.01)
        nn.init.zeros_(linear.bias)
        self.net = nn.Sequential(nn.Flatten(), linear)
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.criterion(logits, y)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net[1].weight.T, self.net[1].bias

    @torch.no_grad()
    def load_weights(self, W: torch.Tensor, b: torch.Tensor) -> None:
        self.net[1].weight.copy_(W.T)
        self.net[1].bias.copy_(b)
