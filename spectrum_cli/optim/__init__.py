"""Optimizer rules: one module per optimizer family, registered in the entry-point group
``spectrum.optimizers`` (``pyproject.toml``) exactly as a third-party rule would be.

- :mod:`.base`: the :class:`~.base.OptimizerRule` protocol, the parsed snapshot, the
  defaults every rule inherits (:class:`~.base.Rule`) and the shared analysis pieces;
- :mod:`.preconditioned`: the exact-by-blocks analysis of every diagonal-preconditioned
  family (K = P^-½ H P^-½);
- :mod:`.sgd`, :mod:`.adam` (Adam, AdamW), :mod:`.rmsprop`, :mod:`.adagrad`,
  :mod:`.adamax`, :mod:`.nadam`, :mod:`.radam`, :mod:`.adafactor`: the families;
- :mod:`.unsupported`: families recognised and refused with the reason (Lion, Muon,
  LBFGS, Rprop, SparseAdam).

Adding a family: one module here with a :class:`~.base.Rule` subclass, and one line in
``[project.entry-points."spectrum.optimizers"]``. The forms are derived in
docs/operators.md.
"""
