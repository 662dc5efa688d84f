"""Adam (Kingma & Ba 2015) for the few parameter tensors of an instance optimisation.

The update of ``torch.optim.Adam`` with its defaults (betas 0.9 and 0.999, eps 1e-8, no weight
decay), step for step, without its start-up cost: the first ``torch.optim`` optimiser of a
process imports ``torch._dynamo``, about a second that a registration process needs for nothing
else (benchmarks/README.md, "Profile").
"""

from __future__ import annotations

import torch


class Adam:
    """Adam over ``param_groups``, ``[{"params": [tensor, ...], "lr": float}, ...]`` as in torch;
    a group's ``"lr"`` may be changed between steps (a schedule)."""

    def __init__(self, param_groups: list[dict], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.param_groups = [dict(group, params=list(group["params"])) for group in param_groups]
        self.betas, self.eps = betas, eps
        # per parameter: first and second moment estimates, and its number of updates
        self.state = {id(p): [torch.zeros_like(p), torch.zeros_like(p), 0]
                      for group in self.param_groups for p in group["params"]}

    def zero_grad(self) -> None:
        """Forget the gradients of the last step."""
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One Adam update of every parameter that has a gradient."""
        beta1, beta2 = self.betas
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[id(p)]
                mean, square, state[2] = state[0], state[1], state[2] + 1
                correction1, correction2_root = 1 - beta1 ** state[2], (1 - beta2 ** state[2]) ** 0.5
                mean.lerp_(p.grad, 1 - beta1)
                square.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                p.addcdiv_(mean, (square.sqrt() / correction2_root).add_(self.eps), value=-group["lr"] / correction1)
