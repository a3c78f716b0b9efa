"""``mptkit explain``: the nearest vocabulary tokens of a prompt's virtual tokens, against the floor
of reading the input-embedding matrix once plus one matmul, in one run.

    python -m benchmarks.explain_bench            # V=32,000, d=4096, N=100; BF16 and F32 matrices
    python -m benchmarks.explain_bench --quick    # V=8,000, d=1024

For each stored dtype (medians of --repeat calls, page cache warm, one torch thread unless --threads):
  read once          the matrix read into memory, as stored (InputEmbeddings.load: one preadv)
  one matmul         prompt (N, d) @ matrix.T (d, V) in float32, the matrix already float32 in memory
  floor              read once + one matmul
  explain (blocks)   mptkit._explain.nearest: a block of rows read, cast to float32 and normalised,
                     one matmul with the normalised prompt, the running top-k kept; block after block
Then ``mptkit explain ... --json`` as a whole process: wall time and peak RSS (memory bounded by a
block, not by the matrix), beside the matrix's size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from benchmarks._timing import median_run


def model_folder(path: Path, V: int, d: int, dtype) -> Path:
    from safetensors.torch import save_file

    from tests.support.basemodels import tokenizer_json

    path.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    save_file({"model.embed_tokens.weight": torch.randn(V, d, generator=g).to(dtype)}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": d, "vocab_size": V}))
    tokenizer_json(path / "tokenizer.json", V)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: a busy shared machine)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mptkit import _explain
    from mptkit._io import load_embeddings
    from tests.support.banks import random_bank
    from tests.support.measured import run_measured

    V, d, N = (8_000, 1024, 100) if args.quick else (32_000, 4096, 100)
    tmp = Path(tempfile.mkdtemp(prefix="mptkit-explain-bench-"))
    bank = random_bank(tmp / "bank.safetensors", T=4, N=N, r=4, d=d)
    prompt = torch.randn(N, d, generator=torch.Generator().manual_seed(1))
    print(f"explain: N={N} virtual tokens, vocabulary V={V:,}, d={d}, top 5, block {_explain.BLOCK_BYTES >> 20} MB")
    print(f"  {'':<10}{'read once':>11}{'one matmul':>12}{'floor':>9}{'explain':>9}{'/ floor':>9}   (ms)")
    for name, dtype in (("BF16", torch.bfloat16), ("F32", torch.float32)):
        folder = model_folder(tmp / name, V, d, dtype)
        e32 = load_embeddings(folder).load().float()
        t_read = median_run(lambda f=folder: load_embeddings(f).load(), args.repeat, warmup=1)[0]
        t_mm = median_run(lambda e=e32: prompt @ e.T, args.repeat, warmup=1)[0]
        ids, _ = _explain.nearest(prompt, load_embeddings(folder), 5)
        ref = torch.nn.functional.normalize(prompt, dim=1) @ torch.nn.functional.normalize(e32, dim=1).T
        assert torch.equal(ids[:, 0], ref.argmax(dim=1)), "not the nearest tokens"
        del e32, ref
        t_ours = median_run(lambda f=folder: _explain.nearest(prompt, load_embeddings(f), 5), args.repeat, warmup=1)[0]
        floor = t_read + t_mm
        print(
            f"  {name:<10}{t_read * 1e3:>11.0f}{t_mm * 1e3:>12.0f}{floor * 1e3:>9.0f}{t_ours * 1e3:>9.0f}"
            f"{t_ours / floor:>9.2f}"
        )
        m = run_measured(
            "explain", bank, "--task", "0", "--base-model", folder, "--json", env={"OMP_NUM_THREADS": str(args.threads)}
        )
        assert m.returncode == 0, m.stderr
        size = V * d * (2 if name == "BF16" else 4) / 1e6
        shown = f"{m.wall_s:.2f} s, peak RSS {m.peak_rss_mb:.0f} MB (matrix {size:.0f} MB)"
        print(f"  {'':<10}mptkit explain process: {shown}")


if __name__ == "__main__":
    main()
