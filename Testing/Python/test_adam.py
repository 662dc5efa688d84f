"""``dmmreg.adam.Adam`` updates parameters exactly as ``torch.optim.Adam`` with its defaults."""

import torch

from dmmreg.adam import Adam


def test_adam_matches_torch_step_for_step_with_a_schedule():
    torch.manual_seed(0)
    ours = [torch.randn(5, 4, requires_grad=True), torch.randn(3, requires_grad=True)]
    theirs = [p.detach().clone().requires_grad_() for p in ours]
    optimisers = (Adam([{"params": [ours[0]], "lr": 0.1}, {"params": [ours[1]], "lr": 0.0}]),
                  torch.optim.Adam([{"params": [theirs[0]], "lr": 0.1}, {"params": [theirs[1]], "lr": 0.0}]))
    for step in range(40):
        for optimiser, (a, b) in zip(optimisers, (ours, theirs)):
            for group, lr in zip(optimiser.param_groups, (0.1 * (1 - step / 50), 0.05)):
                group["lr"] = lr
            optimiser.zero_grad()
            ((a**3).sum() + b.sin().sum()).backward()
            optimiser.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
