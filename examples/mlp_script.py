"""A workload defined in a script, with its own knobs, optimizer and learning-rate schedule.

    python examples/mlp_script.py                    # a 3-variant sweep of the model's own knobs
    trainbench run examples/mlp_script.py:WORKLOAD depth=1,3

Each run's fresh process imports this file again as a module, so the sweep below sits under
``if __name__ == "__main__":`` (trainbench refuses to start one while the file is being imported).
`width` and `depth` are the model's knobs; `optimizer=` and `scheduler=` replace the generic
`optimizer`/`weight_decay` and `scheduler`/`lr_warmup_steps` knobs (which then refuse a value),
while `lr` stays a knob because the factory reads `cfg.lr`. Targets of -1 are unlabelled samples,
left out of the loss and of its element count through `ignore_index`.
"""
import torch
from torch import nn
from torch.nn.functional import cross_entropy

import trainbench


def mlp(cfg) -> nn.Module:
    layers = [nn.Linear(16, cfg.width), nn.ReLU()]
    for _ in range(cfg.depth - 1):
        layers += [nn.Linear(cfg.width, cfg.width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(cfg.width, 4))


def points(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4].argmax(1)).where(torch.rand(n, generator=g) > 0.2, torch.tensor(-1))  # 20% unlabelled
    return torch.utils.data.TensorDataset(x, y)


WORKLOAD = trainbench.SimpleWorkload(
    "mlp", model=mlp, train=lambda cfg: points(2048, 0), eval=lambda cfg: points(512, 1),
    loss=lambda out, batch: cross_entropy(out, batch[1], ignore_index=-1), ignore_index=-1,
    knobs={"width": 64, "depth": 2},
    optimizer=lambda model, cfg: torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, nesterov=True),
    scheduler=lambda opt, cfg, total: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1)),
    batch_size=64, bench_steps=20)


if __name__ == "__main__":
    df = trainbench.sweep(WORKLOAD, {"wide": {"width": 256}, "deep": {"depth": 4}}, baseline={"lr": 0.05},
                          repeats=3, equivalence=False)
    print(df[["samples_per_s", "speedup", "speedup_ci_low", "speedup_ci_high"]].to_string())
