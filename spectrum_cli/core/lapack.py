"""SciPy's LAPACK and BLAS wrappers without importing ``scipy.linalg``.

``from scipy.linalg.lapack import dgees`` runs ``scipy/linalg/__init__.py`` first, which
imports ``scipy._lib._array_api`` and through it array-api-compat's NumPy namespace (a
star import of NumPy that loads ``numpy.f2py``, ``numpy.char``, ...): ~0.3 s of every
process that eigen-analyses one square matrix, against ~0.04 s for the two f2py
extension modules themselves (SciPy 1.17, measured in ``docs/benchmarks.md``). The
eigen analysis needs only those: :func:`flapack` and :func:`fblas` load
``scipy/linalg/_flapack*.so`` and ``_fblas*.so`` from SciPy's folder by file, under
their own names, and register them in ``sys.modules``, so a later ``import scipy.linalg``
finds and reuses them (``from scipy.linalg import _flapack`` and SciPy's own lookups work;
the one difference from an ordinary import is that the attribute ``scipy.linalg._flapack``
of the package imported later is not set). Where SciPy is laid out otherwise, or
``scipy.linalg`` is already imported, it is the ordinary import.

The module lock serializes this module's callers, not Python's import of
``scipy.linalg`` in another thread; an f2py module is complete when ``exec_module``
returns, so the worst such a race can do is load the extension a second time.
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
    full = f"scipy.linalg.{name}"
    with _lock:
        module = sys.modules.get(full)
        if module is not None:
            return module
        if "scipy.linalg" not in sys.modules:
            import scipy

            folder = Path(scipy.__file__).parent / "linalg"
            for suffix in importlib.machinery.EXTENSION_SUFFIXES:
                path = folder / f"{name}{suffix}"
                spec = importlib.util.spec_from_file_location(full, path) \
                    if path.is_file() else None
                if spec is None or spec.loader is None:
                    continue
                module = importlib.util.module_from_spec(spec)
                sys.modules[full] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[full]
                    raise
                return module
    return importlib.import_module(full)


def flapack() -> ModuleType:
    """``scipy.linalg._flapack`` (what ``scipy.linalg.lapack`` re-exports: ``dgees``,
    ``ztrtri``, ``ztrtrs``, ...)."""
    return _extension("_flapack")


def fblas() -> ModuleType:
    """``scipy.linalg._fblas`` (what ``scipy.linalg.blas`` re-exports: ``ztrsv``, ...)."""
    return _extension("_fblas")
