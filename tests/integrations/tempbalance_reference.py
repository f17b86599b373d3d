"""The reference run of live TempBalance: a small seeded training driven by the
reference's own ``Tempbalance`` class, and the same run driven by spectrum's loop
callback with ``balance="tempbalance"``.

Reference: github YefanZhou/TempBalance, ``tempbalance.py`` at commit 9f0d9c7e (read from
a git mirror). It imports torch, numpy and pandas only; its ``pl_fitting='median'``
branch calls ``torch.arange(n).cuda()`` for the KS distance (not used for α or the
learning rates), which this script drops (two occurrences, checked) so that it runs on
a CPU. Nothing else of it is changed.

The run (float64, seeded): an MLP 16-64-96-(LayerNorm)-80-64-4, SGD with momentum,
``STEPS`` steps on one fixed batch, a learning rate LR · 0.5^(step // EVERY) (constant
between measurements), a measurement every ``EVERY`` steps. The reference builds its
groups with ``build_optimizer_param_group`` and, after each measurement step, calls
``step(optimizer, untuned_lr)`` with the next untuned learning rate, as ``main_tb.py``
does once per epoch. One difference, on purpose: the reference tunes from the initial
weights (``initialize=True``) while spectrum's factors are 1 until the first
measurement, so the reference's groups are set to the untuned rate before the first
step. Recorded: the learning rate each parameter stepped with, at every step, and the
final weights (a fingerprint: sum, norm, first entries).

Regenerate ``tempbalance_reference.json`` (from the repository root)::

    git -C /work/.mirror/YefanZhou+TempBalance/repo show \\
        9f0d9c7e86b70c6613ac3b44b5fd147873050823:tempbalance.py > /tmp/tb_reference.py
    .venv/bin/python tests/integrations/tempbalance_reference.py /tmp/tb_reference.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

REPOSITORY = "https://github.com/YefanZhou/TempBalance"
COMMIT = "9f0d9c7e86b70c6613ac3b44b5fd147873050823"
MIRROR = Path("/work/.mirror/YefanZhou+TempBalance/repo")
JSON = Path(__file__).with_name("tempbalance_reference.json")
LR, MU, STEPS, EVERY = 0.05, 0.9, 6, 2


def reference_class(source: str) -> type:
    """The reference's ``Tempbalance`` class from its source (``.cuda()`` dropped)."""
    assert source.count("torch.arange(n).cuda()") == 2
    namespace: dict = {"__name__": "tempbalance_reference"}
    exec(compile(source.replace("torch.arange(n).cuda()", "torch.arange(n)"),
                 f"tempbalance.py@{COMMIT[:8]}", "exec"), namespace)
    return namespace["Tempbalance"]


def mirror_source() -> str | None:
    """``tempbalance.py`` at ``COMMIT`` from the git mirror, None without one."""
    import subprocess

    if not MIRROR.exists():
        return None
    out = subprocess.run(["git", "-C", str(MIRROR), "show", f"{COMMIT}:tempbalance.py"],
                         capture_output=True, text=True)
    return out.stdout if out.returncode == 0 else None


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 96), nn.Tanh(),
                         nn.LayerNorm(96), nn.Linear(96, 80), nn.Tanh(), nn.Linear(80, 64),
                         nn.Tanh(), nn.Linear(64, 4)).double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(32, 16, generator=g, dtype=torch.float64),
            torch.randn(32, 4, generator=g, dtype=torch.float64))


def untuned(step: int) -> float:
    """The global learning rate of the step after ``step`` optimizer steps."""
    return LR * 0.5 ** (step // EVERY)


def _record(net: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    return {name: float(lr_of[id(p)]) for name, p in net.named_parameters()}


def _train(net: torch.nn.Module, optimizer: torch.optim.Optimizer, after_step) -> list:
    """STEPS steps; the learning rates each parameter stepped with (read in a step
    post-hook registered first: before spectrum's post-hook puts the untuned rates
    back, hooks running in the order registered)."""
    x, y = batch()
    seen: list[dict[str, float]] = []
    optimizer.register_step_post_hook(lambda opt, a, k: seen.append(_record(net, opt)))
    for step in range(1, STEPS + 1):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(net(x), y).backward()
        optimizer.step()
        after_step(step)
    return seen


def fingerprint(net: torch.nn.Module) -> dict[str, list[float]]:
    """Each final weight's sum, Frobenius norm and first 8 entries (the JSON stays
    small)."""
    return {k: [float(v.sum()), float(v.norm()), *map(float, v.flatten()[:8])]
            for k, v in net.state_dict().items()}


def reference_run(Tempbalance: type) -> dict:
    net = model()
    tb = Tempbalance(net=net, lr_min_ratio=0.5, lr_max_ratio=1.5)
    groups, _ = tb.build_optimizer_param_group(untuned_lr=LR, initialize=True)
    optimizer = torch.optim.SGD(groups, lr=LR, momentum=MU)
    for g in optimizer.param_groups:  # factors 1 before the first measurement
        g["lr"] = LR

    def after_step(step: int) -> None:
        if step % EVERY == 0:
            tb.step(optimizer, untuned(step))

    lrs = _train(net, optimizer, after_step)
    return {"lrs": lrs, "weights": fingerprint(net)}


def spectrum_run(**callback: object) -> tuple[dict, object]:
    """The same run with spectrum's loop callback (``balance`` in ``callback``), the
    untuned rate from a ``LambdaLR`` stepped every step."""
    from spectrum_cli.integrations.balancing import TempBalance
    from spectrum_cli.integrations.loop import SpectrumCallback

    net = model()
    optimizer = torch.optim.SGD(TempBalance.param_groups(net, LR), lr=LR, momentum=MU)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: untuned(s) / LR)
    logged: list = []
    cb = SpectrumCallback(every_n_steps=EVERY, square="none", indicators=["tensors.max_kappa"],
                          log=lambda values, step: logged.append((step, values)),
                          **callback)

    def after_step(step: int) -> None:
        scheduler.step()
        cb.after_step(net, step, optimizer=optimizer)

    lrs = _train(net, optimizer, after_step)
    return {"lrs": lrs, "weights": fingerprint(net), "logged": logged}, cb


def main(path: str) -> None:
    out = reference_run(reference_class(Path(path).read_text()))
    out = {"repository": REPOSITORY, "commit": COMMIT, "file": "tempbalance.py",
           "command": "git show 9f0d9c7e:tempbalance.py > /tmp/tb_reference.py; "
                      ".venv/bin/python tests/integrations/tempbalance_reference.py "
                      "/tmp/tb_reference.py",
           "torch": torch.__version__, "lr": LR, "momentum": MU, "steps": STEPS,
           "every": EVERY, **out}
    JSON.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
