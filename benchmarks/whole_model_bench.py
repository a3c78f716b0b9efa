"""Finding the prompt encoder in a 10 GB whole-model .safetensors: reads stay lazy.

On the 2-core development machine, warm cache:

    whole-model file: 10.5 GB, 268 tensors, 3.8 MB on disk (sparse); prompt encoder N=100, d=4096, T=16, r=8 (3.8 MB)
    operation                                 median wall (s)  peak RSS (MB)
    mptkit.load + read the 3 tensors                    0.104             26
    mptkit inspect                                      0.115             26
    mptkit validate                                     0.116             26
    safetensors safe_open + get_tensor x3               1.121            223
    read the whole file once                            1.001             24


    python -m benchmarks.whole_model_bench              # a 10 GB file
    python -m benchmarks.whole_model_bench --gb 1       # smaller

How the file is made: a safetensors header listing a whole PEFT MPT model of 268 F32 tensors
(``base_model.model.*`` layers of a 10 GB decoder, ``word_embeddings.weight``, and
``prompt_encoder.default.{embedding.weight, prefix_task_cols, prefix_task_rows}`` with N=100,
d=4096, T=16, r=8), written with real random bytes for the three prompt-encoder tensors only; the
rest of the file is a hole (``truncate``), so it takes 3.8 MB of disk but reads as 10 GB.

Each row is one whole process (median wall of --repeat runs after a warm-up, peak RSS), beside two
baselines measured in the same run: safetensors' own lazy ``safe_open`` + ``get_tensor`` of the
three tensors, and reading the whole file once (the cost of any reader that is not lazy; a
``load_file`` of 10 GB would need 10 GB of memory, so it is not run).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.banks import sparse_safetensors

PY = sys.executable


def make_file(path: Path, gb: float) -> dict:
    """The sparse whole-model file; returns the prompt encoder's tensor names and shapes."""
    N, d, T, r = 100, 4096, 16, 8
    layers = 24
    per_layer = int(gb * 1e9 / 4 / layers / 3) // d * d  # 3 matrices per layer
    tensors = {}
    for i in range(layers):
        for part in ("q_proj", "up_proj", "down_proj"):
            tensors[f"base_model.model.model.layers.{i}.{part}.weight"] = [per_layer // d, d]
        for part in ("input_layernorm", "post_attention_layernorm"):
            for j in range(4):
                tensors[f"base_model.model.model.layers.{i}.{part}.{j}.weight"] = [d]
    tensors["word_embeddings.weight"] = [32000, d]
    enc = {
        "prompt_encoder.default.embedding.weight": [N, d],
        "prompt_encoder.default.prefix_task_cols": [T, N, r],
        "prompt_encoder.default.prefix_task_rows": [T, r, d],
    }
    tensors.update(enc)
    data = {name: os.urandom(4 * math.prod(shape)) for name, shape in enc.items()}
    out = sparse_safetensors(path, {name: ("F32", tensors[name]) for name in sorted(tensors)}, data=data)
    return {"tensors": len(tensors), "size": out["size"], "enc": list(enc)}


MPTKIT_FIND = "import mptkit, sys; b = mptkit.load(sys.argv[1]); print(sum(len(a.read()) for a in b.tensors.values()))"
SAFE_OPEN = (
    "import sys; from safetensors import safe_open\n"
    "with safe_open(sys.argv[1], 'pt') as f:\n"
    "    print(sum(f.get_tensor(k).numel() for k in sys.argv[2:]))"
)
READ_ALL = (
    "import sys\nwith open(sys.argv[1], 'rb', buffering=0) as f:\n"
    "    b = bytearray(1 << 24)\n    while f.readinto(b): pass"
)


def run(argv: list[str]) -> tuple[float, float]:
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(argv)}\n{err}")
    return wall, usage.ru_maxrss / 1024  # this parent is small (no torch), so the child's own peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mptkit-whole-") as tmp:
        path = Path(tmp) / "model.safetensors"
        info = make_file(path, args.gb)
        disk = os.stat(path).st_blocks * 512
        print(
            f"whole-model file: {info['size'] / 1e9:.1f} GB, {info['tensors']} tensors, {disk / 1e6:.1f} MB on disk "
            f"(sparse); prompt encoder N=100, d=4096, T=16, r=8 ({3.8:.1f} MB)"
        )
        rows = [
            ("mptkit.load + read the 3 tensors", [PY, "-c", MPTKIT_FIND, str(path)]),
            ("mptkit inspect", [PY, "-m", "mptkit", "inspect", str(path)]),
            ("mptkit validate", [PY, "-m", "mptkit", "validate", str(path)]),
            ("safetensors safe_open + get_tensor x3", [PY, "-c", SAFE_OPEN, str(path), *info["enc"]]),
            ("read the whole file once", [PY, "-c", READ_ALL, str(path)]),
        ]
        print(f"{'operation':<40} {'median wall (s)':>16} {'peak RSS (MB)':>14}")
        for label, argv in rows:
            run(argv)  # warm-up
            results = [run(argv) for _ in range(args.repeat if "whole file" not in label else 1)]
            wall = statistics.median(w for w, _ in results)
            rss = max(m for _, m in results)
            print(f"{label:<40} {wall:>16.3f} {rss:>14.0f}")


if __name__ == "__main__":
    main()
