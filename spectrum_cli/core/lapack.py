"""SciPy's LAPACK and BLAS wrappers without importing ``scipy.linalg``.

``from scipy.linalg.lapack import dgees`` runs ``scipy/linalg/__init__.py`` first, which
imports ``scipy._lib._array_api`` and through it array-api-compat's NumPy namespace (a
star import of NumPy that loads ``numpy.f2py``, ``numpy.char``, ...): ~0.3 s of every
process that eigen-analyses one square matrix, against ~0.04 s for the two f2py
extension modules themselves (SciPy 1.17, measured in ``docs/benchmarks.md``). The
eigen analysis needs only those: :func:`flapack` and :func:`fblas` load
``scipy/linalg/_flapack*.so`` and ``_fblas*.so`` from SciPy's folder by file, as
``spectrum_cli.core.lapack._flapack`` and ``..._fblas``: names of spectrum's own, so
spectrum never stands in for SciPy's modules. A host process that imports
``scipy.linalg`` later (a Dask worker, a training script) gets SciPy's ordinary import,
with its own module objects and attributes; the wrappers are the same Fortran routines
either way. Where SciPy is laid out otherwise, or ``scipy.linalg`` is already imported,
SciPy's own modules are used.

The loaded modules are in ``sys.modules`` (CPython puts a single-phase extension
module there), so :func:`spectrum_cli.core.measure.single_threaded` sees the BLAS they
bring and limits its threads.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType

_lock = threading.Lock()


def _extension(name: str) -> ModuleType:
    own = f"{__name__}.{name}"  # the last part must stay the module's: PyInit_<name>
    with _lock:
        module = sys.modules.get(own)
        if module is not None:
            return module
        if "scipy.linalg" not in sys.modules:
            import scipy

            folder = Path(scipy.__file__).parent / "linalg"
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = folder / f"{name}{suffix}"
                spec = importlib.util.spec_from_file_location(own, path) \
                    if path.is_file() else None
                if spec is None or spec.loader is None:
                    continue
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                sys.modules.setdefault(own, module)
                return module
    return importlib.import_module(f"scipy.linalg.{name}")


def flapack() -> ModuleType:
    """SciPy's ``_flapack`` (what ``scipy.linalg.lapack`` re-exports: ``dgees``,
    ``ztrtri``, ``ztrtrs``, ...)."""
    return _extension("_flapack")


def fblas() -> ModuleType:
    """SciPy's ``_fblas`` (what ``scipy.linalg.blas`` re-exports: ``ztrsv``, ...)."""
    return _extension("_fblas")
