"""LLM-shaped sharded bf16 checkpoints for the big-checkpoint benchmarks (issue #12).

    python bench/make_llm_shaped.py OUT [--shape small|tinyllama] [--seed 0] [--force]
    python bench/make_llm_shaped.py --shape llama70b --describe      # counts only

Writes an HF-style folder: ``config.json`` (a Llama config with the architecture's dims),
``model-0000k-of-0000N.safetensors`` shards and ``model.safetensors.index.json``, with
the tensor names and shapes of Hugging Face's ``LlamaForCausalLM`` (``nn.Linear``
weights are ``(out, in)``): per layer ``self_attn.{q,k,v,o}_proj``,
``mlp.{gate,up,down}_proj`` and two RMSNorm vectors, then ``model.norm``,
``model.embed_tokens`` and an untied ``lm_head``.

Shapes (``--describe`` lists the matrices as (shape, count)):

  small      6 layers, hidden 512, intermediate 1408, vocab 8000, 8 heads, 4 KV heads
             (k/v 256 x 512): 44 matrices, 2.6e7 parameters, 49 MiB; for quick runs
  tinyllama  TinyLlama-1.1B: 22 layers, hidden 2048, intermediate 5632, vocab 32000,
             32 heads, 4 KV heads (k/v 256 x 2048): 156 matrices, 1.1e9 parameters, 2.2 GB
  llama7b    Llama-2-7B: 32 layers, hidden 4096, intermediate 11008, vocab 32000, MHA
             (13.5 GB in bf16: about 8 minutes to write on one core)
  llama70b   Llama-2-70B: 80 layers, hidden 8192, intermediate 28672, vocab 32000,
             64 heads, 8 KV heads (k/v 1024 x 8192)
llama70b is only described (the projection in bench/project_llm.py needs its (shape,
count) list), never written.

Weights: random, but not i.i.d. Gaussian. Each m x n matrix is

    W = s · ( T · diag(c) + U diag(λ) Vᵀ )

* ``T``: i.i.d. Student-t entries with ν = 4 degrees of freedom, scaled to unit variance:
  heavy-tailed entries (finite variance, infinite fourth moment), so the bulk is a
  Marchenko-Pastur law with a few large outliers rather than a clean MP edge
  (Marchenko & Pastur, Math. USSR-Sbornik 1, 1967; for heavy-tailed entries see Martin
  & Mahoney, JMLR 22(165), 2021, §3).
* ``c``: log-normal column scales ``exp(0.35 z)``: input channels of unequal size, as the
  outlier features of trained LLMs (Dettmers et al., LLM.int8(), NeurIPS 2022).
* ``U diag(λ) Vᵀ``: a rank ``r = max(4, min(m, n) // 16)`` signal with Gaussian factors
  (columns ~ unit norm) and power-law spikes ``λ_i = α i^(-1/2)``, ``α`` chosen so that
  the signal carries half the energy of the noise (‖·‖_F² ratio 0.5). The top singular
  values stand several times above the bulk edge and decay into it as a power law: the
  "heavy-tailed" top of trained layers' ESDs (Martin & Mahoney, 2021) in miniature.
* ``s``: a global scale so that entries have standard deviation ~0.02 (a common init).
RMSNorm vectors are ``1 + 0.05 z``. Each tensor draws from its own stream
(``SeedSequence([seed, crc32(name)])``): the folder does not depend on shard layout.
Tall and wide matrices stay well conditioned (κ ~ 10-100: the dense backend's Gram route
applies, as on real LLM layers); square ones have a small σ_min (κ ~ 1e3-1e5: gesdd).

Memory: one shard at a time (the bf16 arrays of a shard plus a block's float32/float64
temporaries), written with the ``safetensors`` package (zero-copy ``TensorSpec`` where
available, bytes otherwise).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
import zlib
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

#: Degrees of freedom of the Student-t noise.
NU = 4.0
#: ‖signal‖_F² / ‖noise‖_F².
SIGNAL_ENERGY = 0.5
#: Exponent of the spikes' power law, λ_i ∝ i^(-SPIKE_DECAY).
SPIKE_DECAY = 0.5
#: Standard deviation of the log of the column scales.
COLUMN_SPREAD = 0.35
#: Target entry standard deviation.
ENTRY_STD = 0.02
#: Entries generated per block (float64 Student-t temporaries: 32 MiB).
BLOCK = 1 << 22


@dataclass(frozen=True)
class Arch:
    """A Llama-family decoder's dimensions."""

    name: str
    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


ARCHS = {
    "small": Arch("small", 8000, 512, 1408, 6, 8, 4),
    "tinyllama": Arch("tinyllama", 32000, 2048, 5632, 22, 32, 4),
    "llama7b": Arch("llama7b", 32000, 4096, 11008, 32, 32, 32),
    "llama70b": Arch("llama70b", 32000, 8192, 28672, 80, 64, 8),
}
#: Shapes this script writes; the others are described only.
WRITABLE = ("small", "tinyllama", "llama7b")


def tensors(arch: Arch) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every tensor of ``arch``, in the HF checkpoint's order."""
    h, i, hd = arch.hidden, arch.intermediate, arch.head_dim
    out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (arch.vocab, h))]
    for layer in range(arch.layers):
        p = f"model.layers.{layer}."
        out += [
            (p + "self_attn.q_proj.weight", (arch.heads * hd, h)),
            (p + "self_attn.k_proj.weight", (arch.kv_heads * hd, h)),
            (p + "self_attn.v_proj.weight", (arch.kv_heads * hd, h)),
            (p + "self_attn.o_proj.weight", (h, arch.heads * hd)),
            (p + "mlp.gate_proj.weight", (i, h)),
            (p + "mlp.up_proj.weight", (i, h)),
            (p + "mlp.down_proj.weight", (h, i)),
            (p + "input_layernorm.weight", (h,)),
            (p + "post_attention_layernorm.weight", (h,)),
        ]
    out += [("model.norm.weight", (h,)), ("lm_head.weight", (arch.vocab, h))]
    return out


def matrix_counts(arch: Arch) -> Counter:
    """How many matrices of each (m, n) shape ``arch`` has."""
    return Counter(shape for _, shape in tensors(arch) if len(shape) == 2)


def parameters(arch: Arch) -> int:
    return sum(math.prod(shape) for _, shape in tensors(arch))


def config(arch: Arch, seed: int) -> dict:
    """A ``config.json`` in the style of Hugging Face's ``LlamaConfig``."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": arch.vocab,
        "hidden_size": arch.hidden,
        "intermediate_size": arch.intermediate,
        "num_hidden_layers": arch.layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "spectrum_bench": {"shape": arch.name, "seed": seed,
                           "weights": "s*(T*diag(c) + U diag(lambda) V^T), see "
                                      "bench/make_llm_shaped.py", **asdict(arch)},
    }


# --------------------------------------------------------------------------- weights


def rng_for(seed: int, name: str) -> np.random.Generator:
    """The tensor's own stream: independent of the order and shard it is written in."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def _blocks(shape: tuple[int, int], rng: np.random.Generator) -> Iterator[tuple[int, np.ndarray]]:
    """Row blocks (first row, float32 rows) of an ``m x n`` matrix of the structure in
    the module docstring; float64 temporaries of at most :data:`BLOCK` entries."""
    m, n = shape
    r = max(4, min(m, n) // 16)
    c = np.exp(COLUMN_SPREAD * rng.standard_normal(n)).astype(np.float32)
    # λ_i = α i^-d with Σλ² = SIGNAL_ENERGY · E‖T diag(c)‖_F² = SIGNAL_ENERGY · m Σc².
    lam = np.arange(1, r + 1, dtype=np.float64) ** -SPIKE_DECAY
    lam *= math.sqrt(SIGNAL_ENERGY * m * float(np.sum(c.astype(np.float64) ** 2))
                     / float(np.sum(lam ** 2)))
    u = (rng.standard_normal((m, r)) / math.sqrt(m) * lam).astype(np.float32)
    vt = (rng.standard_normal((r, n)) / math.sqrt(n)).astype(np.float32)
    scale = ENTRY_STD / math.sqrt(1.0 + SIGNAL_ENERGY) / math.sqrt(float(np.mean(c ** 2)))
    t_scale = 1.0 / math.sqrt(NU / (NU - 2.0))  # Student-t variance ν/(ν-2)
    rows = max(1, BLOCK // n)
    for a in range(0, m, rows):
        b = min(m, a + rows)
        block = rng.standard_t(NU, (b - a, n)).astype(np.float32)
        block *= t_scale * c
        block += u[a:b] @ vt
        block *= scale
        yield a, block


def matrix(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """An ``m x n`` float32 matrix of the structure in the module docstring."""
    out = np.empty(shape, dtype=np.float32)
    for a, block in _blocks(shape, rng):
        out[a:a + block.shape[0]] = block
    return out


def matrix_bf16(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """:func:`matrix` rounded to bfloat16 (uint16 bits), converted block by block: the
    only full-size array is the result."""
    out = np.empty(shape, dtype=np.uint16)
    for a, block in _blocks(shape, rng):
        out[a:a + block.shape[0]] = to_bf16(block)
    return out


def vector(n: int, rng: np.random.Generator) -> np.ndarray:
    """An RMSNorm weight: 1 + 0.05 z."""
    return (1.0 + 0.05 * rng.standard_normal(n)).astype(np.float32)


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounded to nearest even (finite input)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    u = u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))
    return (u >> np.uint32(16)).astype(np.uint16)


def make(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """The bf16 bits of tensor ``name``."""
    rng = rng_for(seed, name)
    return matrix_bf16(shape, rng) if len(shape) == 2 else to_bf16(vector(shape[0], rng))


# --------------------------------------------------------------------------- writing


def shard_plan(arch: Arch, shards: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """The tensors in checkpoint order, cut into ``shards`` runs of about equal bytes."""
    items = tensors(arch)
    total = sum(math.prod(s) for _, s in items)
    plan: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(shards)]
    done = 0
    for item in items:
        k = min(shards - 1, int(shards * done / total))
        plan[k].append(item)
        done += math.prod(item[1])
    return [p for p in plan if p]


def _serialize(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write bf16 bit arrays as a safetensors file with the ``safetensors`` package."""
    import safetensors

    metadata = {"format": "pt"}
    if hasattr(safetensors, "TensorSpec"):  # 0.8+: zero-copy, the arrays stay alive here
        specs = {k: safetensors.TensorSpec(dtype="bfloat16", shape=list(v.shape),
                                           data_ptr=v.ctypes.data, data_len=v.nbytes)
                 for k, v in arrays.items()}
    else:  # older releases: a dict per tensor with its bytes
        specs = {k: {"dtype": "bfloat16", "shape": list(v.shape), "data": v.tobytes()}
                 for k, v in arrays.items()}
    safetensors.serialize_file(specs, str(path), metadata=metadata)


def write_folder(arch: Arch, out: Path, seed: int, shards: int = 2,
                 log=print) -> dict:
    """Write the folder; returns the index document."""
    out.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(arch, shards)
    weight_map: dict[str, str] = {}
    total = 0
    for k, items in enumerate(plan, 1):
        fname = f"model-{k:05d}-of-{len(plan):05d}.safetensors"
        t0 = time.perf_counter()
        arrays = {name: make(name, shape, seed) for name, shape in items}
        tmp = out / (fname + ".part")
        _serialize(arrays, tmp)
        tmp.chmod(0o666 & ~_umask())  # the package creates 0600 files
        tmp.replace(out / fname)
        size = sum(v.nbytes for v in arrays.values())
        total += size
        weight_map.update({name: fname for name, _ in items})
        log(f"  {fname}: {len(items)} tensors, {size / 2**20:.0f} MiB in "
            f"{time.perf_counter() - t0:.1f} s")
        del arrays
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(config(arch, seed), indent=2) + "\n")
    return index


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def describe(arch: Arch) -> Iterator[str]:
    counts = matrix_counts(arch)
    yield (f"{arch.name}: {arch.layers} layers, hidden {arch.hidden}, intermediate "
           f"{arch.intermediate}, vocab {arch.vocab}, {arch.heads} heads, {arch.kv_heads} "
           f"KV heads; {sum(counts.values())} matrices, {parameters(arch):.3g} "
           f"parameters ({2 * parameters(arch) / 2**20:,.0f} MiB in bf16)")
    for (m, n), count in sorted(counts.items(), key=lambda kv: -kv[0][0] * kv[0][1]):
        yield f"  {m:6d} x {n:<6d} x {count}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, help="folder to write")
    ap.add_argument("--shape", choices=sorted(ARCHS), default="small")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--describe", action="store_true",
                    help="print the matrices as (shape, count) and write nothing")
    ap.add_argument("--force", action="store_true",
                    help="replace a folder this script wrote before")
    args = ap.parse_args(argv)
    arch = ARCHS[args.shape]
    if args.describe:
        print("\n".join(describe(arch)))
        return 0
    if args.out is None:
        ap.error("OUT is required unless --describe")
    if args.shape not in WRITABLE:
        ap.error(f"--shape {args.shape} is described only (--describe); writable: "
                 f"{', '.join(WRITABLE)}")
    if args.shards < 1:
        ap.error("--shards: expected at least 1")
    if args.out.exists() and any(args.out.iterdir()):
        ours = (args.out / "config.json").exists() and "spectrum_bench" in \
            (args.out / "config.json").read_text(errors="replace")
        if not (args.force and ours):
            print(f"{args.out}: not empty; --force replaces a folder this script wrote",
                  file=sys.stderr)
            return 2
        shutil.rmtree(args.out)
    print("\n".join(describe(arch)))
    t0 = time.perf_counter()
    write_folder(arch, args.out, args.seed, args.shards)
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s (seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
