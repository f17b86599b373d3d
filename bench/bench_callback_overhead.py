"""What the training-loop callback costs a run, measured in one run with and without it.

    python bench/bench_callback_overhead.py                    # the default cadence
    python bench/bench_callback_overhead.py --every 20 --steps 40   # shorter

The model is the README's example size: MiniLM-L6's shape (BERT, hidden 384, 6 layers,
12 heads, intermediate 1536, vocabulary 30522: 22.7M parameters, 40 matrices), built
from ``transformers.BertConfig`` with random weights (nothing downloaded), trained with
AdamW on random token ids (``--batch`` x ``--seq``). Arm A: ``--steps`` plain steps.
Arm B: the same steps with ``spectrum_cli.integrations.loop.SpectrumCallback`` at
``--every`` (default: its documented default, ``DEFAULT_EVERY_N_STEPS``), default
settings (every matrix, no ``fail_on``). The arms alternate step by step (two models in
one process), so a shared machine's load falls on both alike. Printed: the step times, the time of each
measurement, the overhead measured as (B - A) / A, the overhead from the callback's own
timed calls (sum of ``after_step`` times / A: less noisy on a shared machine), and the
cadence at which this step time gives 1 %. The overhead of N-step cadence is
t_measure / (N * t_step): on a GPU, whose steps are far shorter than these CPU steps
while the measurement (float64 SVDs on the CPU) is not, it is larger at the same N.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch


def model() -> torch.nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                     num_attention_heads=12, intermediate_size=1536)
    return BertModel(cfg)


class Arm:
    """One model and its optimizer, stepped on the same token ids as the other arm."""

    def __init__(self, batch: int, seq: int) -> None:
        self.net = model()
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(1)
        self.ids = [torch.randint(0, 30522, (batch, seq), generator=g) for _ in range(4)]
        self.times: list[float] = []

    def step(self, step: int) -> None:
        self.opt.zero_grad()
        self.net(self.ids[step % 4]).last_hidden_state.pow(2).mean().backward()
        self.opt.step()


def run(steps: int, batch: int, seq: int, callback) -> tuple[Arm, Arm, list[float]]:
    """Both arms, one step of each in turn (a shared machine's load hits both alike):
    each arm's step times (arm B's with its ``after_step``) and the ``after_step``
    times."""
    a, b = Arm(batch, seq), Arm(batch, seq)
    for step in range(-1, 1):  # warm-up, untimed
        a.step(step)
        b.step(step)
    cb_t = []
    for step in range(1, steps + 1):
        t0 = time.perf_counter()
        a.step(step)
        t1 = time.perf_counter()
        b.step(step)
        t2 = time.perf_counter()
        callback.after_step(b.net, step)
        t3 = time.perf_counter()
        a.times.append(t1 - t0)
        b.times.append(t3 - t1)
        cb_t.append(t3 - t2)
    return a, b, cb_t


def main() -> None:
    from spectrum_cli.integrations.loop import DEFAULT_EVERY_N_STEPS, SpectrumCallback

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--every", type=int, default=DEFAULT_EVERY_N_STEPS)
    ap.add_argument("--steps", type=int, default=None, help="per arm (default: --every)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    a = ap.parse_args()
    steps = a.steps or a.every
    n = sum(p.numel() for p in model().parameters())
    print(f"model: MiniLM-L6 shape, {n / 1e6:.1f}M parameters; batch {a.batch} x seq "
          f"{a.seq}; torch threads {torch.get_num_threads()}, cores {os.cpu_count()}")
    print(f"cadence: every_n_steps={a.every} (default {DEFAULT_EVERY_N_STEPS}); "
          f"{steps} steps per arm")
    cb = SpectrumCallback(every_n_steps=a.every, log=lambda values, step: None)
    arm_a, arm_b, cb_t = run(steps, a.batch, a.seq, cb)
    plain, with_cb = arm_a.times, arm_b.times
    measured = [t for i, t in enumerate(cb_t, 1) if i % a.every == 0]
    idle = [t for i, t in enumerate(cb_t, 1) if i % a.every != 0]
    t_a, t_b = sum(plain), sum(with_cb)
    t_step = t_a / len(plain)  # the mean: what the totals (and a run) pay
    t_meas = statistics.mean(measured) if measured else float("nan")
    print(f"step time without: mean {t_step * 1e3:.1f} ms, median "
          f"{statistics.median(plain) * 1e3:.1f} ms; with: median "
          f"{statistics.median(with_cb) * 1e3:.1f} ms")
    print(f"measurements: {len(measured)}, each {t_meas:.3f} s; after_step between them "
          f"{(statistics.median(idle) if idle else 0.0) * 1e6:.1f} us (median)")
    print(f"arms: without {t_a:.2f} s, with {t_b:.2f} s")
    print(f"overhead measured (B - A) / A: {100 * (t_b - t_a) / t_a:+.2f} %")
    print(f"overhead of the callback's timed calls / A: {100 * sum(cb_t) / t_a:.2f} %")
    for every in sorted({a.every, DEFAULT_EVERY_N_STEPS}):
        print(f"  t_measure / (every_n_steps * mean step) at every_n_steps={every}: "
              f"{100 * t_meas / (every * t_step):.2f} %")
    print(f"every_n_steps for <= 1 % at this step time: "
          f">= {max(1, int(-(-100 * t_meas // t_step)))}")


if __name__ == "__main__":
    main()
