"""The chapter's from-scratch implementation: softmax, cross-entropy and SGD by hand (accuracy, which scores both
implementations, is the shared :mod:`~fashion_mnist_softmax.models.classifier`'s).

Autograd computes the gradients, as in the chapter. The chapter's softmax and loss overflow for large
logits (``exp(1000)`` is inf), so these subtract the row maximum first, which changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

import torch
from annotated_types import Ge, Gt, Interval
from torch import nn

from fashion_mnist_softmax.models.classifier import Classifier, beside


def softmax(logits: torch.Tensor) -> torch.Tensor:
    """Row-wise exp(o_j) / sum_i exp(o_i), computed on logits shifted by their row maximum."""
    exp = (logits - logits.amax(dim=1, keepdim=True)).exp()
    return exp / exp.sum(dim=1, keepdim=True)


def log_sum_exp(logits: torch.Tensor) -> torch.Tensor:
    """log sum_i exp(o_i) over the classes (the last dim), without overflow.

    The shift is a constant for autograd: its gradient cancels (the result's gradient is softmax(o) either way),
    so backward need not route it through the max.
    """
    top = logits.detach().amax(dim=-1, keepdim=True)
    return top.squeeze(-1) + (logits - top).exp().sum(dim=-1).log()


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean of -log softmax(o)_y over the batch, as log-sum-exp(o) minus the true class's logit.

    Logits of shape (B, K, 10), K models side by side as in a fused sweep, give each model's loss, (K,); the
    labels are (B,), or (B, S) for logits (B, S, K, 10) whose S groups of models each see batches of their own.
    """
    true = logits.gather(-1, beside(y, logits).unsqueeze(-1).expand(*logits.shape[:-1], 1)).squeeze(-1)
    return (log_sum_exp(logits) - true).mean(dim=0)


@torch.no_grad()
def sgd(
    params: Iterable[nn.Parameter],
    lr: float | torch.Tensor,
    momentum: float | torch.Tensor = 0.0,
    weight_decay: float | torch.Tensor = 0.0,
    velocities: dict[nn.Parameter, torch.Tensor] | None = None,
) -> dict[nn.Parameter, torch.Tensor]:
    """Minibatch SGD: ``param -= lr * grad``, with optional L2 weight decay and heavy-ball momentum.

    The chapter's ``d2l.sgd`` divides by the batch size because its loss is a sum; the loss here
    is already the batch mean. Momentum follows ``torch.optim.SGD``: v = momentum * v + g, with
    v = g on the first step. Returns the velocities, to pass back in at the next step. Hyperparameters
    given as tensors broadcast over the parameter: the fused launcher's members each have their own.
    """
    velocities = {} if velocities is None else velocities
    for p in params:
        if p.grad is None:
            continue
        g = p.grad + weight_decay * p if torch.is_tensor(weight_decay) or weight_decay else p.grad
        if torch.is_tensor(momentum) or momentum:
            v = velocities.get(p)
            g = velocities[p] = g.clone() if v is None else v.mul_(momentum).add_(g)
        p.sub_(lr * g)
    return velocities


class SGD(torch.optim.Optimizer):
    """:func:`sgd` as a ``torch.optim.Optimizer``: Lightning, schedulers and checkpoints need one."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: Annotated[float, Gt(0)],
        momentum: Annotated[float, Interval(ge=0, lt=1)] = 0.0,
        weight_decay: Annotated[float, Ge(0)] = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state[p]
                velocities = {p: state["velocity"]} if "velocity" in state else {}
                if (v := sgd([p], *self.hyperparameters(group, p), velocities).get(p)) is not None:
                    state["velocity"] = v
        return loss

    def hyperparameters(self, group: dict[str, Any], p: nn.Parameter) -> tuple[Any, Any, Any]:
        """The lr, momentum and weight decay of ``p``'s update."""
        return group["lr"], group["momentum"], group["weight_decay"]


def init_weights(num_inputs: int, num_outputs: int) -> torch.Tensor:
    """W (num_inputs × num_outputs) ~ N(0, 0.01), drawn in the (num_outputs, num_inputs) order of
    ``nn.Linear.weight`` and transposed, so that one seed gives ``W == linear.weight.T`` in the concise model."""
    return torch.normal(0.0, 0.01, (num_outputs, num_inputs)).T.contiguous()


class ScratchSoftmaxRegression(Classifier):
    """O = XW + b with W (784×10) from :func:`init_weights` and b = 0, trained with the hand-written :class:`SGD`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        num_inputs, num_outputs = self.hparams.num_inputs, self.hparams.num_outputs
        self.W = nn.Parameter(init_weights(num_inputs, num_outputs))
        self.b = nn.Parameter(torch.zeros(num_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.hparams.num_inputs) @ self.W + self.b

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, y)

    def weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.W, self.b

    @torch.no_grad()
    def load_weights(self, W: torch.Tensor, b: torch.Tensor) -> None:
        self.W.copy_(W)
        self.b.copy_(b)
