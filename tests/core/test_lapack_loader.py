"""SciPy's LAPACK/BLAS wrappers loaded without ``scipy.linalg`` (issue 24, goal 1): the
eigen analysis of a square matrix must not pay the package's ~0.3 s import, a host that
imports ``scipy.linalg`` afterwards must get exactly SciPy's ordinary import (its own
modules and attributes), and the results are those of the ordinary import. Each check runs
in a fresh interpreter (this one has imported scipy.linalg long ago)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def _run(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_eigen_analysis_does_not_import_scipy_linalg():
    out = _run("""
        import json, sys
        import numpy as np
        from spectrum_cli.core.nonnormal import analyze_square
        a = np.random.default_rng(0).standard_normal((40, 40)) / 8
        r = analyze_square(a)
        print(json.dumps({"linalg": "scipy.linalg" in sys.modules,
                          "scipy_flapack": "scipy.linalg._flapack" in sys.modules,
                          "flapack": "spectrum_cli.core.lapack._flapack" in sys.modules,
                          "rho": r.eigen.spectral_radius,
                          "kappa": r.eigen.kappa_V, "K": r.kreiss.value}))
    """)
    assert out["linalg"] is False and out["scipy_flapack"] is False
    assert out["flapack"] is True
    import numpy as np

    from spectrum_cli.core.nonnormal import analyze_square

    a = np.random.default_rng(0).standard_normal((40, 40)) / 8
    here = analyze_square(a)  # this process: scipy.linalg imported the ordinary way
    assert out["rho"] == here.eigen.spectral_radius
    assert out["kappa"] == here.eigen.kappa_V
    assert out["K"] == here.kreiss.value
    assert out["rho"] == float(np.max(np.abs(np.linalg.eigvals(a))))


def test_a_host_importing_scipy_linalg_afterwards_gets_the_ordinary_import():
    """What a Dask worker or a training script sees after spectrum ran in it: SciPy's own
    module objects, bound as the package's attributes, computing what ours compute."""
    out = _run("""
        import json, sys
        import numpy as np
        from spectrum_cli.core.lapack import fblas, flapack
        ours, blas = flapack(), fblas()
        a = np.random.default_rng(1).standard_normal((7, 7))
        before = ours.dgees(lambda x, y: 0, a, compute_v=0)
        import scipy.linalg
        from scipy.linalg import lapack, blas as sblas
        after = lapack.dgees(lambda x, y: 0, a, compute_v=0)
        t = np.triu(np.random.default_rng(2).standard_normal((5, 5))) + 3 * np.eye(5)
        x = np.arange(5.0) + 1j
        print(json.dumps({
            "attrs": [hasattr(scipy.linalg, "_flapack"), hasattr(scipy.linalg, "_fblas")],
            "scipy_modules": [sys.modules["scipy.linalg._flapack"] is scipy.linalg._flapack,
                              scipy.linalg._flapack is not ours,
                              scipy.linalg._fblas is not blas],
            "dgees": [np.array_equal(before[0], after[0]), np.array_equal(before[2], after[2]),
                      np.array_equal(before[3], after[3])],
            "ztrsv": bool(np.array_equal(blas.ztrsv(t, x), sblas.ztrsv(t, x))),
            "again": flapack() is ours,
            "schur": scipy.linalg.schur([[1.0, 2.0], [0.0, 3.0]])[0].tolist()}))
    """)
    assert out == {"attrs": [True, True], "scipy_modules": [True, True, True],
                   "dgees": [True, True, True], "ztrsv": True, "again": True,
                   "schur": [[1.0, 2.0], [0.0, 3.0]]}


def test_after_scipy_linalg_it_is_the_ordinary_import():
    out = _run("""
        import json
        import scipy.linalg.lapack as lapack
        from spectrum_cli.core.lapack import flapack
        print(json.dumps({"same": flapack().dgees is lapack.dgees}))
    """)
    assert out == {"same": True}
