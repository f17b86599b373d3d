"""Baseline (a): a plain script doing scipy float32 ``svdvals`` on every 2-D float tensor
of a safetensors file, one pass. What a user would write by hand."""

import sys

import numpy as np
import scipy.linalg
from safetensors.numpy import load_file

tensors = load_file(sys.argv[1])
n = 0
for name, w in tensors.items():
    if w.ndim == 2 and np.issubdtype(w.dtype, np.floating):
        s = scipy.linalg.svdvals(w.astype(np.float32, copy=False))
        n += 1
        print(f"{name}\t{s[0] / s[-1]:.6g}")
print(f"{n} matrices", file=sys.stderr)
