"""Measure one matrix with one backend: every metric it can honestly provide.

A backend with the full spectrum (``"all"`` in its singular-value capabilities) gives
every metric exactly. A backend of extremes gives σ_max (and σ_min if it can reach the
bottom) with error bounds, the metrics that follow from them by interval arithmetic
(κ, spectral gap, stable rank; ‖W‖_F is exact from the entries) and, if it estimates
trace functions, the spectral entropy with an error bar. What it cannot give is listed
in ``unavailable`` with the reason: never silently a different number.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
import zlib
from typing import Any, Iterator

import numpy as np

from spectrum_cli.core import metrics as M
from spectrum_cli.core.nonnormal import analyze_square
from spectrum_cli.core.results import Eigenvalues, TensorResult
from spectrum_cli.core.scaling import ldexp, scale_exponent, scaled_result

# --------------------------------------------------------------------------- threads
#
# The same tensor gives the same bits whatever the parallelism (``--jobs``,
# ``--threads``, Dask, the callbacks). Every library routine whose rounding depends on
# its thread count runs with ONE thread while a matrix is measured: OpenBLAS's dgemm /
# dsyrk (even 300 x 300 times 300 x 64 differs in the last bit between 1 and 2 threads),
# its and MKL's (torch) syevd, gesdd, getrf, geev. What may use more threads is the Gram
# product of big matrices (:func:`gram_tiles`): fixed column tiles, each an independent
# one-threaded BLAS call, split among :func:`blas_threads_for` Python threads; the tiles
# depend on the shape only, so the bits do not depend on how many threads computed them.
#
# Why so little parallelism inside a matrix. Measured on the 2-core machine this was
# written on (OpenBLAS 0.3.30/0.3.31, torch 2.13 MKL; load average 4-11 from other
# work), min of 2-5 runs, 1 thread / 2 threads:
#
# ============  ===============  ===============  ===============  ================
# shape         syrk (Gram)      eigvalsh numpy   eigvalsh torch   gesdd
# ============  ===============  ===============  ===============  ================
# 128 x 128     0.2 / 8.0 ms     1.0 / 28 ms      1.0 / 709 ms     1.7 / 2.9 ms
# 256 x 256     0.8 / 1.0 ms     8.3 / 20 ms      21 / 21 ms       24 / 54 ms
# 512 x 512     9.8 / 32 ms      40 / 2414 ms     83 / 355 ms      136 / 359 ms
# 384 x 1536    29 / 36 ms       34 / 77 ms       33 / 99 ms       175 / 3334 ms
# 768 x 768     50 / 101 ms      176 / 876 ms     243 / 1516 ms    421 / 2388 ms
# 768 x 3072    144 / 352 ms     172 / 1035 ms    276 / 1897 ms    1572 / 16942 ms
# 1024 x 1024   85 / 118 ms      326 / 1458 ms    331 / 2317 ms    735 / 6265 ms
# 1536 x 1536   374 / 480 ms     1442 / 13696 ms  1843 / 12420 ms  4321 / 31504 ms
# ============  ===============  ===============  ===============  ================
#
# Two library threads lost at every size (0.02-0.8x): their threads spin-wait for work
# against the other processes. On a busy machine the crossover is "never"; on an idle
# one the gain of a second thread is at most 2x on the BLAS-3 parts, so no LAPACK call
# gets it (determinism first). The Gram tiles use Python threads that block instead of
# spinning; they are split only where a tile product is big enough to pay for a thread
# hand-off by far (:data:`PARALLEL_GRAM_FLOPS`, see the table in
# :func:`blas_threads_for`).

#: Columns of one Gram tile (``gram_tiles``).
GRAM_TILE = 256
#: Gram products of at least this many multiply-adds (``m·k²``, the ``m x k`` matrix
#: ``W`` with ``k <= m``) are computed tile by tile, and those tiles may be split among
#: threads; below, one one-threaded ``dsyrk`` (a function of the shape, not the budget).
PARALLEL_GRAM_FLOPS = 1 << 27

#: ``--backend auto``: dense (exact, every metric) while the matrix has at most this
#: many entries (2 GiB in float64: Llama-70B's 28672x8192 MLP and 32000x8192 embedding
#: matrices, whose Gram route costs far less than Lanczos to the same accuracy: 32000x4096
#: took 68 s with lanczos at one thread, bench/project_llm.py) and its smaller side at
#: most AUTO_DENSE_MAX_DIM (the k×k Gram or SVD workspace); beyond, lanczos (bounds for
#: σ_max and σ_min, an SLQ estimate of the entropy), or on a GPU randomized-svd (lanczos
#: runs on the CPU only). The same limits bound ``rand_distance`` (core/esd_metrics.py),
#: which needs two dense eigen-decompositions: they live here, below core/analyze.py,
#: so that esd_metrics reads them without an import circle.
AUTO_DENSE_MAX_ENTRIES = 2**28
AUTO_DENSE_MAX_DIM = 8192

_lock = threading.Lock()
_depth = 0
_saved: dict[str, Any] = {}
_budget: int | None = None
_controller: tuple[int, Any] | None = None


def env_threads() -> int | None:
    """The smallest thread count the environment asks for (``OMP_NUM_THREADS``,
    ``OPENBLAS_NUM_THREADS``, ``MKL_NUM_THREADS``), if any."""
    asked = []
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            asked.append(int(value))
    return min(asked) if asked else None


def set_matrix_threads(threads: int | None) -> None:
    """The threads one matrix may use in this process from now on (None: what the
    environment asks for, else 1); set by the executors, read by the dense backend."""
    global _budget
    _budget = None if threads is None else max(1, int(threads))


def matrix_threads() -> int:
    """The threads one matrix may use in this process (:func:`set_matrix_threads`;
    unset: the environment's ``*_NUM_THREADS``, else 1: a Dask worker or a caller that
    said nothing gets no threads it did not ask for)."""
    return _budget if _budget is not None else (env_threads() or 1)


def blas_threads_for(shape: tuple[int, ...], budget: int) -> int:
    """Threads the Gram product of an ``m x n`` matrix gets out of ``budget``: 1 below
    :data:`PARALLEL_GRAM_FLOPS` multiply-adds (``max(m,n)·min(m,n)²``), else up to one
    per tile row, at most ``budget``. Everything else in a matrix's measurement runs on
    one thread (see the module's notes). Examples (budget 2): 500 x 500 (1.25e8): 1; 768
    x 3072 (1.8e9): 2; 2048 x 2048: 2; 64 x 4096 (1.7e7): 1."""
    if len(shape) != 2 or budget <= 1:
        return 1
    m, n = (int(shape[0]), int(shape[1]))
    k, big = min(m, n), max(m, n)
    if big * k * k < PARALLEL_GRAM_FLOPS or k <= GRAM_TILE:
        return 1
    return max(1, min(budget, -(-k // GRAM_TILE)))


def _controllers() -> list[Any]:
    """threadpoolctl's controllers of the BLAS/OpenMP libraries loaded now (scanned
    again only when modules were imported since the last scan)."""
    global _controller
    loaded = len(sys.modules)
    if _controller is None or _controller[0] != loaded:
        try:
            from threadpoolctl import ThreadpoolController

            libs = list(ThreadpoolController().lib_controllers)
        except ImportError:  # pragma: no cover - a dependency
            libs = []
        _controller = (loaded, libs)
    return _controller[1]


_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class _Env:
    """The thread variables as they were: put back by :func:`_restore`."""

    def __init__(self) -> None:
        self.values = {k: os.environ.get(k) for k in _THREAD_VARS}

    def set_num_threads(self, _: Any) -> None:
        for k, v in self.values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _one_thread() -> dict[str, Any]:
    saved: dict[str, Any] = {}
    for lib in _controllers():
        n = lib.num_threads
        if n != 1:
            saved[lib.filepath] = (lib, n)
            lib.set_num_threads(1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        saved["torch"] = (torch, torch.get_num_threads())
        torch.set_num_threads(1)
    return saved


def _restore(saved: dict[str, Any]) -> None:
    for key, (lib, n) in saved.items():
        lib.set_num_threads(n)


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Every BLAS/LAPACK/OpenMP library and torch at one thread for the block, as they
    were after it (re-entrant and shared by the threads of a process: the first to enter
    sets, the last to leave restores). A library loaded within the block (scipy.linalg's
    OpenBLAS by the eigen analysis, torch) starts with one thread too: the
    ``*_NUM_THREADS`` variables say 1 meanwhile."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            env = _Env()
            os.environ.update({k: "1" for k in _THREAD_VARS})
            _saved = _one_thread()
            _saved[" environment"] = (env, None)
        else:  # a library loaded meanwhile
            for key, value in _one_thread().items():
                _saved.setdefault(key, value)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                saved, _saved = _saved, {}
                _restore(saved)


def gram_tiles(w: np.ndarray, threads: int | None = None) -> np.ndarray:
    """``WᵀW`` of an ``m x k`` matrix (``k <= m`` wanted), with the same bits whatever
    ``threads`` is. Below :data:`PARALLEL_GRAM_FLOPS` one ``dsyrk``; above, the upper
    :data:`GRAM_TILE`-column tiles, each one one-threaded BLAS call (``dsyrk`` on the
    diagonal, ``dgemm`` off it), split among ``threads`` (default
    :func:`blas_threads_for` of :func:`matrix_threads`) Python threads, then mirrored.
    The caller holds :func:`single_threaded`."""
    m, k = w.shape
    if m * k * k < PARALLEL_GRAM_FLOPS or k <= GRAM_TILE:
        return w.T @ w
    if threads is None:
        threads = blas_threads_for(w.shape, matrix_threads())
    edges = list(range(0, k, GRAM_TILE)) + [k]
    spans = [slice(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    g = np.empty((k, k), dtype=np.result_type(w.dtype, np.float64))
    pairs = [(i, j) for i in range(len(spans)) for j in range(i, len(spans))]

    def tile(pair: tuple[int, int]) -> None:
        i, j = pair
        left = w[:, spans[i]]
        g[spans[i], spans[j]] = left.T @ (left if i == j else w[:, spans[j]])

    if threads > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads,
                                thread_name_prefix="spectrum-gram") as pool:
            list(pool.map(tile, pairs))
    else:
        for pair in pairs:
            tile(pair)
    for i, j in pairs:
        if i != j:
            g[spans[j], spans[i]] = g[spans[i], spans[j]].T
    return g


def _interval(value: float, lo: float, hi: float) -> float:
    """Half-width that covers [lo, hi] around value."""
    return max(abs(hi - value), abs(value - lo))


def analyze_matrix(planned: Any, a: np.ndarray, options: Any, backend: Any,
                   metrics: Any = None) -> TensorResult:
    """All metrics of one float64 matrix ``a`` (already reshaped) with ``backend``:
    ``metrics`` are the registered :class:`~spectrum_cli.core.metrics.Metric` objects
    (the built-in ones by default); a metric this backend cannot serve is listed in
    ``unavailable`` with the reason. Computed with one library thread
    (:func:`single_threaded`): the same bits whatever the parallelism."""
    with single_threaded():
        return _analyze_matrix(planned, a, options, backend, metrics)


def _analyze_matrix(planned: Any, a: np.ndarray, options: Any, backend: Any,
                    metrics: Any = None) -> TensorResult:
    registered = M.BUILTIN if metrics is None else tuple(
        m for m in M.ordered(metrics)
        if not m.opt_in or getattr(options, m.opt_in, False))  # costly ones when asked
    t0 = time.perf_counter()
    base = dict(name=planned.name, shape=tuple(planned.shape),
                matrix_shape=tuple(planned.matrix_shape), dtype=planned.dtype,
                kind=planned.kind)
    # Row norms first: any NaN/Inf entry makes ‖A‖_F² non-finite, so that one pass also
    # screens the entries (a finite matrix whose squares overflowed gets the full check).
    with np.errstate(over="ignore", invalid="ignore"):
        entries = M.entry_metrics(a)
    if not math.isfinite(entries["frobenius_norm"]) and not np.isfinite(a).all():
        n_nan = int(np.count_nonzero(np.isnan(a)))
        n_inf = int(np.count_nonzero(np.isinf(a)))
        return TensorResult(**base, status="nonfinite",
                            metrics={"nonfinite_count": n_nan + n_inf},
                            notes=(f"{n_nan} NaN and {n_inf} Inf entries: spectra not computed",),
                            time_s=time.perf_counter() - t0)
    caps = backend.capabilities
    common = {"dtype": options.dtype, "device": options.device}
    extra: dict[str, Any] = {}
    # Entries near the float64 limits: every backend (plugins too) sees 2^-e·A (exact),
    # and the absolute quantities are scaled back; ratios need nothing.
    e = scale_exponent(a, entries["frobenius_norm"], options.dtype)
    b, fro_b = a, entries["frobenius_norm"]
    if e:
        b = ldexp(a, -e)
        fro_b = math.sqrt(float(np.einsum("ij,ij->", b, b)))
    reasons: dict[str, str] = {}
    if "all" in caps.singular_values:
        sv = backend.singular_values(b, which="all", route=options.svd_route,
                                     frobenius_norm=fro_b, **common)
        failed = extra.setdefault("unavailable", {})
        builtin = {m.name for m in M.BUILTIN}
        # Built-ins are ratios or are scaled back below; other metrics get the spectrum
        # of A itself (absolute scales: log norms, xmin, the MP edge).
        values = M.singular_value_metrics(
            sv.values, a.shape, options.effective_rank_tau,
            [m for m in registered if m.name in builtin], failed=failed)
        values.update(M.singular_value_metrics(
            ldexp(sv.values, e) if e else sv.values, a.shape, options.effective_rank_tau,
            [m for m in registered if m.name not in builtin], failed=failed,
            seed=options.seed, reasons=reasons))
    else:
        sv, extra = _extremes(b, options, backend, fro_b ** 2, common, planned.name)
        values = extra.pop("metrics")
        for m in registered:  # what needs the whole spectrum, a backend of extremes lacks
            if m.needs == "singular_values" and m.name not in values:
                extra["unavailable"].setdefault(
                    m.name, f"needs the full spectrum; backend {backend.name!r} computes "
                    "extremes")
    metrics = values
    if e:
        sv = _scale_back(sv, metrics, extra, e)
    metrics.update(entries)
    unavailable: dict[str, str] = extra.get("unavailable", {})
    eig = nonnormal = None
    if planned.wants_eigen(options):
        if "all" in caps.eigenvalues:
            t_eig = time.perf_counter()
            nonnormal = analyze_square(a, options.eps, options.eps_relative,
                                       options.power_max, metrics.get("sigma_max"))
            route = "schur (with vectors)" if nonnormal.eigen.schur is not None \
                else "geev (with vectors)"
            eig = Eigenvalues(nonnormal.eigen.eigenvalues, "dense", route, "exact",
                              time.perf_counter() - t_eig)
            metrics.update(nonnormal.metrics())
            extra.setdefault("notes", []).extend(nonnormal.notes)
        else:
            why = (f"backend {backend.name!r} computes no eigenvalues of non-symmetric "
                   "matrices")
            unavailable.update({k: why for k in ("spectral_radius", *M.NONNORMAL_METRICS)})
    full = sv.values if sv.which == "all" else None
    _plugin_metrics(registered, a, eig, metrics, unavailable, reasons,
                    M.SpectrumContext(tuple(a.shape), options.effective_rank_tau,
                                      options.seed, full))
    metrics["nonfinite_count"] = 0
    converged = sv.converged and extra.get("converged", True)
    notes = list(sv.notes) + extra.get("notes", []) + [
        f"{name} undefined: {why}" for name, why in reasons.items()]
    return TensorResult(**base, status="ok", metrics=metrics, singular_values=sv,
                        eigenvalues=eig, notes=tuple(notes),
                        time_s=time.perf_counter() - t0,
                        accuracy=extra.get("accuracy", {}), unavailable=unavailable,
                        converged=converged, smallest=extra.get("smallest"),
                        nonnormal=nonnormal)


def _plugin_metrics(registered: Any, a: np.ndarray, eig: Any, metrics: dict[str, Any],
                    unavailable: dict[str, str], reasons: dict[str, str],
                    ctx: M.SpectrumContext) -> None:
    """Registered metrics of the eigenvalues or of the matrix itself; a metric that
    fails is unavailable with its error, never a crash and never silently absent."""
    for m in registered:
        if m.needs == "singular_values" or m.name in metrics:
            continue
        if m.needs == "eigenvalues" and eig is None:
            unavailable[m.name] = ("needs eigenvalues: square matrices eigen-analysed under "
                                   "--square")
            continue
        arg = eig.values if m.needs == "eigenvalues" else a
        try:
            metrics[m.name] = m(arg, ctx)
        except Exception as exc:  # noqa: BLE001 - a plugin's failure is reported, not fatal
            unavailable[m.name] = M.failure(exc)
            continue
        if metrics[m.name] is None and (why := m.reason(arg, ctx)):
            reasons[m.name] = why


def _scale_back(sv: Any, metrics: dict[str, Any], extra: dict[str, Any], e: int) -> Any:
    """Turn results computed on ``2^-e·A`` into those of ``A``: singular values, σ_max,
    σ_min and their error bars times ``2^e`` (inf past 1.8e308, said so in the notes);
    κ, entropies, ranks, stable rank and spectral gap are ratios and stay as they are."""
    for key in ("sigma_max", "sigma_min"):
        if metrics.get(key) is not None:
            metrics[key] = ldexp(float(metrics[key]), e)
        bar = extra.get("accuracy", {}).get(key)
        if bar is not None and bar.get("error_bar") is not None:
            bar["error_bar"] = ldexp(float(bar["error_bar"]), e)
    if extra.get("smallest") is not None:
        extra["smallest"] = scaled_result(extra["smallest"], e)
    return scaled_result(sv, e)


def _extremes(a: np.ndarray, options: Any, backend: Any, fro_sq: float,
              common: dict[str, Any], name: str = "") -> tuple[Any, dict[str, Any]]:
    """Metrics from the extreme singular values (and trace estimates) of ``a``."""
    caps = backend.capabilities
    kmin = min(a.shape)
    # Independent random draws per tensor, reproducible from (seed, tensor name).
    seed = zlib.crc32(name.encode(), options.seed) if name else options.seed
    notes: list[str] = []
    try:
        top = backend.singular_values(a, k=min(max(options.top_k, 2), kmin),
                                      which="largest", seed=seed, **common)
    except NotImplementedError as exc:  # a backend that only gives σ_max
        top = backend.singular_values(a, k=1, which="largest", seed=seed, **common)
        notes.append(f"only σ_max: {exc}")
    s = top.values
    e = top.error_bounds if top.error_bounds is not None else np.full(s.size,
                                                                      top.error_estimate)
    s1, e1 = float(s[0]), float(e[0])
    metrics: dict[str, Any] = {"sigma_max": s1}
    accuracy = {"sigma_max": {"accuracy": top.accuracy, "error_bar": e1, "method": top.route}}
    unavailable: dict[str, str] = {}
    converged = top.converged
    if s1 > 0:
        sr = fro_sq / s1**2
        metrics["stable_rank"] = sr
        lo_s1 = max(s1 - e1, 1e-300)
        accuracy["stable_rank"] = {"accuracy": "bound", "method": "interval",
                                   "error_bar": _interval(sr, fro_sq / (s1 + e1) ** 2,
                                                          fro_sq / lo_s1**2)}
    else:
        metrics["stable_rank"] = None
    if s.size >= 2 and s1 > 0:
        s2, e2 = float(s[1]), float(e[1])
        gap = (s1 - s2) / s1
        metrics["spectral_gap"] = gap
        lo = 1 - (s2 + e2) / max(s1 - e1, 1e-300)
        hi = 1 - max(s2 - e2, 0.0) / (s1 + e1)
        accuracy["spectral_gap"] = {"accuracy": "bound", "method": "interval",
                                    "error_bar": _interval(gap, lo, hi)}
    elif kmin < 2:
        metrics["spectral_gap"] = None  # one singular value: undefined
    else:
        unavailable["spectral_gap"] = f"backend {backend.name!r} computed only σ_max"
    smallest = None
    if "smallest" in caps.singular_values:
        smallest = backend.singular_values(a, k=1, which="smallest", seed=seed, **common)
        converged = converged and smallest.converged
        sn, en = float(smallest.values[-1]), float(smallest.error_bounds[-1])
        metrics["sigma_min"] = sn
        accuracy["sigma_min"] = {"accuracy": "bound", "error_bar": en,
                                 "method": smallest.route}
        kappa = s1 / sn if sn > 0 else math.inf
        metrics["kappa"] = kappa
        hi = (s1 + e1) / (sn - en) if sn > en else math.inf
        lo = max(s1 - e1, 0.0) / (sn + en) if sn + en > 0 else math.inf
        accuracy["kappa"] = {"accuracy": "bound", "method": "interval",
                             "error_bar": _interval(kappa, lo, hi) if math.isfinite(kappa)
                             else math.inf}
    else:
        why = f"backend {backend.name!r} cannot compute the smallest singular values"
        unavailable.update(sigma_min=why, kappa=why)
    if caps.trace_functions and hasattr(backend, "spectral_entropy") and fro_sq > 0:
        est = backend.spectral_entropy(a, fro_sq, seed=seed)
        h, bar = est.value, est.error_bar
        metrics["spectral_entropy"] = h
        metrics["entropy_effective_rank"] = _exp(h)
        for name, value, half in (("spectral_entropy", h, bar),
                                  ("entropy_effective_rank", _exp(h),
                                   _interval(_exp(h), _exp(h - bar), _exp(h + bar)))):
            accuracy[name] = {"accuracy": "estimate", "error_bar": half,
                              "confidence": est.confidence, "method": est.method,
                              "settings": est.settings, "n_matvec": est.n_matvec}
    else:
        why = f"backend {backend.name!r} does not estimate trace functions"
        unavailable.update(spectral_entropy=why, entropy_effective_rank=why)
    if not converged:
        notes.append("did not converge: see error bars")
    return top, {"metrics": metrics, "accuracy": accuracy, "unavailable": unavailable,
                 "smallest": smallest, "converged": converged, "notes": notes}


def _exp(x: float) -> float:
    """``exp(x)``, inf where it overflows (a third-party backend's entropy bar can be
    anything: the interval it gives must not crash the run)."""
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf
