"""SciPy's LAPACK/BLAS wrappers loaded without ``scipy.linalg`` (issue 24, goal 1): the
eigen analysis of a square matrix must not pay the package's ~0.3 s import, a later
``import scipy.linalg`` must reuse the same extension modules, and the results are those
of the ordinary import. Each check runs in a fresh interpreter (this one has imported
scipy.linalg long ago)."""

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
                          "flapack": "scipy.linalg._flapack" in sys.modules,
                          "fblas": "scipy.linalg._fblas" in sys.modules,
                          "rho": r.eigen.spectral_radius,
                          "kappa": r.eigen.kappa_V, "K": r.kreiss.value}))
    """)
    assert out["linalg"] is False
    assert out["flapack"] is True
    import numpy as np

    from spectrum_cli.core.nonnormal import analyze_square

    a = np.random.default_rng(0).standard_normal((40, 40)) / 8
    here = analyze_square(a)  # this process: scipy.linalg imported the ordinary way
    assert out["rho"] == here.eigen.spectral_radius
    assert out["kappa"] == here.eigen.kappa_V
    assert out["K"] == here.kreiss.value
    assert out["rho"] == float(np.max(np.abs(np.linalg.eigvals(a))))


def test_a_later_scipy_linalg_import_reuses_the_loaded_modules():
    out = _run("""
        import json
        from spectrum_cli.core.lapack import fblas, flapack
        first, blas = flapack(), fblas()
        import scipy.linalg
        from scipy.linalg import lapack, blas as sblas
        print(json.dumps({"same": lapack.dgees is first.dgees,
                          "same_blas": sblas.ztrsv is blas.ztrsv,
                          "again": flapack() is first,
                          "schur": scipy.linalg.schur([[1.0, 2.0], [0.0, 3.0]])[0].tolist()}))
    """)
    assert out == {"same": True, "same_blas": True, "again": True,
                   "schur": [[1.0, 2.0], [0.0, 3.0]]}


def test_after_scipy_linalg_it_is_the_ordinary_import():
    out = _run("""
        import json
        import scipy.linalg.lapack as lapack
        from spectrum_cli.core.lapack import flapack
        print(json.dumps({"same": flapack().dgees is lapack.dgees}))
    """)
    assert out == {"same": True}
