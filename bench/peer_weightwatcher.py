"""Peer (b): WeightWatcher 0.7.7 on a model folder (its API cannot open a single
.safetensors file path; a folder holding model.safetensors works)."""

import sys

import weightwatcher as ww

details = ww.WeightWatcher(model=sys.argv[1]).analyze()
print(details[["name", "entropy", "stable_rank"]].to_string())
print(f"{len(details)} layers", file=sys.stderr)
