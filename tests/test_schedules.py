"""Learning-rate schedules (warm-up, cosine with a floor, SWA's constant tail) against torch's own
schedulers, and stochastic weight averaging as the final model of a real tiny run."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_runs import experiment, write_config

from dpda.checkpoint import average_weights, load_weights
from dpda.config import ConfigError, load_config
from dpda.train import train
from dpda.train.logger import read_csv
from dpda.train.trainer import learning_rate


def config_with(optim: dict, train_keys: dict | None = None):
    overrides = [f"optim.{key}={json.dumps(value)}" for key, value in optim.items()]
    overrides += [f"train.{key}={json.dumps(value)}" for key, value in (train_keys or {}).items()]
    return load_config(None, overrides)


def torch_rates(scheduler_of, steps: int, lr: float) -> list[float]:
    """The learning rate torch's scheduler gives each optimizer step, stepped once a step."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = scheduler_of(optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_cosine_with_a_floor_is_clovaai_aasists_per_step_annealing():
    """clovaai/aasist: LambdaLR of min + (max - min) (1 + cos(pi step / total)) / 2 over every
    step (base 1e-4, floor 5e-6), the closed form of torch's CosineAnnealingLR."""
    total = 120
    config = config_with({"lr": 1e-4, "min_lr": 5e-6, "scheduler": "cosine"})
    ours = [learning_rate(config, step, step // 12, total) for step in range(total)]
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR
    reference = torch_rates(lambda o: cosine(o, T_max=total, eta_min=5e-6), total, 1e-4)
    assert ours == pytest.approx(reference, rel=1e-9, abs=0)
    assert ours[0] == 1e-4 and ours[-1] > 5e-6 and min(ours) >= 5e-6


def test_warm_up_then_cosine_to_the_floor_over_the_remaining_steps():
    total, warmup = 100, 10
    config = config_with({"lr": 2e-4, "min_lr": 1e-5, "scheduler": "cosine", "warmup_steps": warmup})
    ours = [learning_rate(config, step, 0, total) for step in range(total)]

    def warm_then_cosine(optimizer):
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / warmup, total_iters=warmup - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=1e-5)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], milestones=[warmup])

    assert ours == pytest.approx(torch_rates(warm_then_cosine, total, 2e-4), rel=1e-9, abs=0)
    assert ours[warmup - 1] == 2e-4 and ours[0] == pytest.approx(2e-5)


def test_swa_lr_holds_over_the_budgets_last_epochs_and_the_keys_are_checked():
    swa = {"epochs": 10, "average": "swa", "swa_epochs": 3, "swa_lr": 2e-4}
    config = config_with({"lr": 1e-3, "scheduler": "cosine"}, swa)
    assert [learning_rate(config, 10 * epoch, epoch, 100) == 2e-4 for epoch in range(10)] == [False] * 7 + [True] * 3
    with pytest.raises(ConfigError, match=r"swa_lr.*null unless average is swa"):
        config_with({}, {"swa_lr": 1e-4})
    with pytest.raises(ConfigError, match=r"min_lr.*at most lr"):
        config_with({"lr": 1e-4, "min_lr": 1e-3})
    with pytest.raises(ConfigError, match="average"):
        config_with({}, {"average": "ema"})


def test_swa_averages_the_last_epochs_run_whatever_their_dev_loss(corpus, tmp_path):
    settings = experiment(corpus, tmp_path / "runs", epochs=4, average="swa", swa_epochs=2, swa_lr=0.004)
    settings["optim"] = {"lr": 0.01, "scheduler": "cosine", "min_lr": 0.001, "warmup_steps": 2}
    results = train(load_config(write_config(tmp_path / "c.yaml", settings)))
    run = tmp_path / "runs" / "tiny"
    assert results.averaged_epochs == [4, 3]  # latest first: its BatchNorm step counts are the final model's
    kept = sorted(path.name for path in (run / "checkpoints").glob("epoch-*.safetensors"))
    assert kept == ["epoch-003.safetensors", "epoch-004.safetensors"]
    expected = average_weights([run / "checkpoints" / f"epoch-{epoch:03d}.safetensors" for epoch in (4, 3)])
    final = load_weights(run / "final.safetensors")[0]
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)
    steps = read_csv(run / "steps.csv")
    per_epoch = len(steps["lr"]) // 4
    assert steps["lr"][0] == pytest.approx(0.005) and steps["lr"][1] == pytest.approx(0.01)
    assert all(lr == pytest.approx(0.004) for lr in steps["lr"][2 * per_epoch :])
    assert 0.001 < steps["lr"][2 * per_epoch - 1] < 0.01  # the cosine ran over the first two epochs
