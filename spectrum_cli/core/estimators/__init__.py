"""Estimators of spectral quantities from matrix-vector products, one per file, each
named after the paper it follows (as curvlinops does): ``lanczos1950`` (the Krylov
kernel: symmetric Lanczos with full reorthogonalization) and ``ubaru2017slq``
(stochastic Lanczos quadrature)."""
