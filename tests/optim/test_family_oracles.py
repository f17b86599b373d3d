"""Every diagonal-preconditioned family against a dense float64 operator built
independently from the live torch.optim optimizer.

Loss L = ½(θ-θ*)ᵀH(θ-θ*), state from a few real steps, θ put at θ* (gradient zero, so
the second-moment updates are second order and drop out of the Jacobian). The oracle J
is central differences of the REAL ``optimizer.step()`` in float64 (``.grad`` set to
H(θ-θ*) by hand) along every coordinate of (θ, momentum buffer). The step is run from
the state whose step IS the one the operator describes: for the snapshot convention the
statistics one step back (v/β2, step t-1) so that torch's own update lands on the
snapshot's v and t; for ``next`` the snapshot itself. ρ, κ(V) (in the optimizer's own
coordinates and in the P-weighted ones, with P computed here from the torch state) and
‖J^k‖ must agree to 1e-8.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from spectrum_cli.core.eigen import eigenstructure
from spectrum_cli.io import optimizer_state as opt_io
from spectrum_cli.optim.base import OperatorContext
from spectrum_cli.runs.optimizer import OperatorOptions

SHAPE = (3, 4)
N = 12
TOL = 1e-8
#: θ*: the stationary point of the L2-regularized loss too (L2 adds wd·θ to the gradient).
STAR = np.zeros(N)
#: Largest relative difference seen per family and metric (printed with -s).
MEASURED: dict[str, float] = {}


class QuadraticProblem:
    """The Hessian source of L = ½(θ-θ*)ᵀH(θ-θ*) at θ = θ*."""

    def __init__(self, h: np.ndarray, theta: np.ndarray):
        self.h, self.n, self.n_hvp = h, h.shape[0], 0
        self.theta = torch.tensor(theta, dtype=torch.float64)
        self._ht = torch.tensor(h)

    def dense(self) -> np.ndarray:
        return self.h

    def loss_of(self, flat):
        d = flat - self.theta.detach()
        return 0.5 * d @ (self._ht @ d)

    def hvp_numpy(self, v):
        return self.h @ v


def problem_matrix(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((N, N)))
    return (q * np.geomspace(0.2, 40.0, N)) @ q.T


def run_steps(make, h, theta_star, steps, seed=0):
    """A live optimizer after ``steps`` real steps on the quadratic, then θ := θ*."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed + 1)
    p = torch.nn.Parameter(torch.tensor(theta_star + rng.normal(0, 0.5, N)).reshape(SHAPE))
    opt = make([p])
    ht, ts = torch.tensor(h), torch.tensor(theta_star)
    for _ in range(steps):
        p.grad = (ht @ (p.detach().reshape(-1) - ts)).reshape(SHAPE)
        opt.step()
    with torch.no_grad():
        p.copy_(ts.reshape(SHAPE))
    return p, opt


def oracle(make, state, h, theta_star, buffer, hstep=1e-6):
    """J of the real step at (θ*, buffer) from ``state``, by central differences."""
    ht, ts = torch.tensor(h), torch.tensor(theta_star)
    size = N if buffer is None else 2 * N

    def step(x):
        p = torch.nn.Parameter(torch.tensor(x[:N]).reshape(SHAPE).clone())
        opt = make([p])
        opt.load_state_dict(copy.deepcopy(state))
        if buffer is not None:
            opt.state[p][buffer].copy_(torch.tensor(x[N:]).reshape(SHAPE))
        p.grad = (ht @ (p.detach().reshape(-1) - ts)).reshape(SHAPE)
        opt.step()
        out = p.detach().reshape(-1).numpy().copy()
        if buffer is not None:
            out = np.r_[out, opt.state[p][buffer].reshape(-1).numpy()]
        return out

    # The step is affine in the buffer once P is frozen, so J does not depend on the
    # buffer's value: perturbing around 0 (not the stored one) keeps rounding at the
    # size of the perturbation itself.
    x0 = theta_star.copy() if buffer is None else np.r_[theta_star, np.zeros(N)]
    def central(hs):
        j = np.empty((size, size))
        for i in range(size):
            e = np.zeros(size)
            e[i] = hs * max(1.0, abs(x0[i]))
            j[:, i] = (step(x0 + e) - step(x0 - e)) / (2 * e[i])
        return j

    # Richardson: the h² term of the central difference cancels, leaving O(h⁴).
    return (4 * central(hstep / 2) - central(hstep)) / 3


def back_one_step(state, t, scale: dict[str, float], extra=None):
    """The state one step before the snapshot at a stationary point: decayed statistics
    divided by their decay, step t-1 (and whatever ``extra`` rewrites)."""
    s = copy.deepcopy(state)
    entry = s["state"][0]
    for key, factor in scale.items():
        entry[key] = entry[key] / factor
    entry["step"] = torch.tensor(float(t - 1))
    if extra:
        extra(entry)
    return s


def rule_entry(state, h, theta_star, convention="snapshot"):
    snap = opt_io.parse(state, {"w": SHAPE}, ["w"])
    ctx = OperatorContext(QuadraticProblem(h, theta_star),
                          OperatorOptions(power_max=10, step_convention=convention))
    snap.rule.operators(snap, [p for p in snap.params if p.moments], ctx)
    (entry,) = ctx.entries
    return snap, entry, ctx.arrays[0], ctx.notes


def compare(family, entry, arrays, j, p, second):
    """ρ, κ(V) in both coordinates and ‖J^k‖ (P-weighted) against the dense oracle."""
    m = entry["metrics"]
    rho = float(np.max(np.abs(np.linalg.eigvals(j))))
    own = eigenstructure(j)
    assert own.kappa_V_well_defined
    if j.shape[0] == N:
        d = np.sqrt(p)
    else:
        d = np.r_[np.sqrt(p), p**second]
    jw = (d[:, None] * j) / d[None, :]
    weighted = eigenstructure(jw)
    diffs = {"rho": abs(m["spectral_radius"] - rho) / rho,
             "kappa_V_euclidean": abs(m["kappa_V_euclidean"] - own.kappa_V) / own.kappa_V,
             "kappa_V": abs(m["kappa_V"] - weighted.kappa_V) / weighted.kappa_V}
    power = np.eye(j.shape[0])
    for k in range(1, 11):
        power = power @ jw
        if k in (1, 2, 5, 10):
            norm = np.linalg.norm(power, 2)
            diffs[f"|J^{k}|"] = abs(arrays["power_norms"][k - 1] - norm) / norm
    for key, value in diffs.items():
        name = f"{family} {key}"
        MEASURED[name] = max(MEASURED.get(name, 0.0), value)
    bad = {k: v for k, v in diffs.items() if not v <= TOL}
    assert not bad, bad
    return diffs


def bc2(b2, t):
    return 1 - b2**t


# --- the families -----------------------------------------------------------------------

RMSPROP = [dict(lr=0.01), dict(lr=0.01, momentum=0.9), dict(lr=0.01, centered=True),
           dict(lr=0.005, momentum=0.8, centered=True, weight_decay=0.1)]


@pytest.mark.parametrize("kw", RMSPROP)
def test_rmsprop(kw):
    h = problem_matrix(1)
    ts = STAR

    def make(ps):
        return torch.optim.RMSprop(ps, **kw)

    _, opt = run_steps(make, h, ts, 6)
    state = opt.state_dict()
    a = kw.get("alpha", 0.99)
    e = state["state"][0]
    scale = {"square_avg": a} | ({"grad_avg": a} if kw.get("centered") else {})
    pre = back_one_step(state, int(e["step"]), scale)
    buffer = "momentum_buffer" if kw.get("momentum") else None
    j = oracle(make, pre, h, ts, buffer)
    v = e["square_avg"].reshape(-1).double().numpy()
    if kw.get("centered"):
        v = v - e["grad_avg"].reshape(-1).double().numpy() ** 2
    p = np.sqrt(v) + 1e-8
    snap, entry, arrays, _ = rule_entry(state, h, ts)
    assert entry["optimizer"] == "rmsprop"
    assert entry["form"] == ("rmsprop-momentum" if buffer else "rmsprop")
    compare("RMSprop" + ("+momentum" if buffer else "") + ("+centered" if kw.get("centered")
                                                          else ""),
            entry, arrays, j, p, 0.5)


@pytest.mark.parametrize("convention", ["snapshot", "next"])
@pytest.mark.parametrize("kw", [dict(lr=0.1, lr_decay=0.05), dict(lr=0.2, weight_decay=0.05,
                                                                  initial_accumulator_value=0.1)])
def test_adagrad(kw, convention):
    h = problem_matrix(2)
    ts = STAR

    def make(ps):
        return torch.optim.Adagrad(ps, **kw)

    _, opt = run_steps(make, h, ts, 5)
    state = opt.state_dict()
    t = int(state["state"][0]["step"])
    pre = back_one_step(state, t + (1 if convention == "next" else 0), {})
    j = oracle(make, pre, h, ts, None)
    p = np.sqrt(state["state"][0]["sum"].reshape(-1).double().numpy()) + 1e-10
    _, entry, arrays, _ = rule_entry(state, h, ts, convention)
    t_used = t + (1 if convention == "next" else 0)
    assert entry["step"] == t_used
    assert entry["settings"]["lr_t"] == pytest.approx(
        kw["lr"] / (1 + (t_used - 1) * kw.get("lr_decay", 0.0)), rel=1e-15)
    compare("Adagrad", entry, arrays, j, p, 0.5)


@pytest.mark.parametrize("kw", [dict(lr=0.02), dict(lr=0.01, weight_decay=0.1,
                                                    betas=(0.8, 0.99))])
def test_adamax(kw):
    h = problem_matrix(3)
    ts = STAR

    def make(ps):
        return torch.optim.Adamax(ps, **kw)

    _, opt = run_steps(make, h, ts, 7)
    state = opt.state_dict()
    b2 = kw.get("betas", (0.9, 0.999))[1]
    t = int(state["state"][0]["step"])
    pre = back_one_step(state, t, {"exp_inf": b2})
    j = oracle(make, pre, h, ts, "exp_avg")
    p = state["state"][0]["exp_inf"].reshape(-1).double().numpy()
    _, entry, arrays, _ = rule_entry(state, h, ts)
    compare("Adamax", entry, arrays, j, p, -0.5)


@pytest.mark.parametrize("convention", ["snapshot", "next"])
@pytest.mark.parametrize("kw", [dict(lr=0.01), dict(lr=0.01, weight_decay=0.1),
                                dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True,
                                     momentum_decay=0.01)])
def test_nadam(kw, convention):
    h = problem_matrix(4)
    ts = STAR

    def make(ps):
        return torch.optim.NAdam(ps, **kw)

    _, opt = run_steps(make, h, ts, 6)
    state = opt.state_dict()
    b1, b2 = 0.9, 0.999
    psi = kw.get("momentum_decay", 4e-3)
    t = int(state["state"][0]["step"])
    if convention == "snapshot":
        mu_t = b1 * (1 - 0.5 * 0.96 ** (t * psi))
        pre = back_one_step(state, t, {"exp_avg_sq": b2, "mu_product": mu_t})
        tu = t
    else:
        pre = back_one_step(state, t + 1, {"exp_avg_sq": b2})
        tu = t + 1
    j = oracle(make, pre, h, ts, "exp_avg")
    v = state["state"][0]["exp_avg_sq"].reshape(-1).double().numpy()
    p = np.sqrt(v / bc2(b2, tu)) + 1e-8
    _, entry, arrays, _ = rule_entry(state, h, ts, convention)
    assert entry["step"] == tu
    compare("NAdam", entry, arrays, j, p, -0.5)


@pytest.mark.parametrize("convention", ["snapshot", "next"])
@pytest.mark.parametrize("steps,kw", [(9, dict(lr=0.01)),
                                      (9, dict(lr=0.01, weight_decay=0.1,
                                               decoupled_weight_decay=True)),
                                      (3, dict(lr=0.01, weight_decay=0.05))])
def test_radam(steps, kw, convention):
    h = problem_matrix(5)
    ts = STAR

    def make(ps):
        return torch.optim.RAdam(ps, **kw)

    _, opt = run_steps(make, h, ts, steps)
    state = opt.state_dict()
    b2 = 0.999
    t = int(state["state"][0]["step"])
    tu = t + (1 if convention == "next" else 0)
    pre = back_one_step(state, tu, {"exp_avg_sq": b2})
    j = oracle(make, pre, h, ts, "exp_avg")
    v = state["state"][0]["exp_avg_sq"].reshape(-1).double().numpy()
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * tu * b2**tu / bc2(b2, tu)
    rectified = rho_t > 5
    p = (np.sqrt(v) + 1e-8) / math.sqrt(bc2(b2, tu)) if rectified else np.ones(N)
    _, entry, arrays, notes = rule_entry(state, h, ts, convention)
    assert entry["settings"]["rectified"] is rectified
    assert entry["form"] == ("radam" if rectified else "radam-unrectified")
    assert any(("> 5" if rectified else "<= 5") in n for n in notes)
    compare("RAdam " + ("rectified" if rectified else "unrectified"), entry, arrays, j, p, -0.5)


def test_radam_cases_cover_both_branches():
    b2 = 0.999
    rho_inf = 2 / (1 - b2) - 1
    rho = [rho_inf - 2 * t * b2**t / bc2(b2, t) for t in (3, 4, 9, 10)]
    assert rho[0] <= 5 and rho[1] <= 5 and rho[2] > 5 and rho[3] > 5


@pytest.mark.parametrize("shape", [(3, 4), (12,)])
@pytest.mark.parametrize("kw", [dict(lr=1.0), dict(lr=0.3, weight_decay=0.1)])
def test_adafactor(kw, shape):
    global SHAPE
    old = SHAPE
    SHAPE = shape
    try:
        h = problem_matrix(6)
        ts = np.linspace(-0.5, 1, N)  # RMS(θ*) > eps2: the relative step is live

        def make(ps):
            return torch.optim.Adafactor(ps, **kw)

        _, opt = run_steps(make, h, ts, 4)
        state = opt.state_dict()
        t = int(state["state"][0]["step"])
        beta2_t = 1 - t ** -0.8
        keys = ("row_var", "col_var") if len(shape) > 1 else ("variance",)
        pre = back_one_step(state, t, {k: beta2_t for k in keys})
        j = oracle(make, pre, h, ts, None, hstep=1e-4)
        e = state["state"][0]
        eps1 = float(np.finfo(np.float64).eps)
        if len(shape) > 1:
            r, c = e["row_var"].double().numpy(), e["col_var"].double().numpy()
            var = (r @ c) / max(r.mean(), eps1)
        else:
            var = e["variance"].double().numpy()
        rms = max(1e-3, float(np.sqrt(np.mean(ts**2))))
        p = (np.sqrt(np.maximum(var, eps1**2)) / rms).reshape(-1)
        _, entry, arrays, notes = rule_entry(state, h, ts)
        assert entry["settings"]["rho_t"] == pytest.approx(min(kw["lr"], 1 / math.sqrt(t)))
        assert any("clipping is inactive" in n for n in notes)
        compare("Adafactor " + ("factored" if len(shape) > 1 else "vector"), entry, arrays,
                j, p, 0.5)
    finally:
        SHAPE = old


def test_adam_and_adamw_against_the_real_step():
    """The legacy families through the same oracle (augmented form)."""
    h = problem_matrix(7)
    ts = STAR
    for cls, kw in ((torch.optim.Adam, dict(lr=0.01, weight_decay=0.05)),
                    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1))):
        def make(ps):
            return cls(ps, **kw)

        _, opt = run_steps(make, h, ts, 6)
        state = opt.state_dict()
        t = int(state["state"][0]["step"])
        pre = back_one_step(state, t, {"exp_avg_sq": 0.999})
        j = oracle(make, pre, h, ts, "exp_avg")
        v = state["state"][0]["exp_avg_sq"].reshape(-1).double().numpy()
        p = np.sqrt(v / bc2(0.999, t)) + 1e-8
        snap = opt_io.parse(state, {"w": SHAPE}, ["w"])
        ctx = OperatorContext(QuadraticProblem(h, ts), OperatorOptions(power_max=10))
        snap.rule.operators(snap, snap.params, ctx)
        aug = ctx.entries[0]
        assert aug["form"] == "adam-augmented"
        compare(cls.__name__, aug, ctx.arrays[0], j, p, -0.5)


def test_zz_measured_differences():
    """Print the largest relative differences seen (pytest -s shows them)."""
    for name, value in sorted(MEASURED.items()):
        print(f"{name:45s} {value:.2e}")
    assert all(v <= TOL for v in MEASURED.values())
