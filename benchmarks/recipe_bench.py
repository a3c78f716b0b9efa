"""Recipes (issue 23): what ``build`` transfers and costs beside the same steps run one by one, what
``verify`` costs beside the build it repeats, and what ``diff`` costs on identical banks (bytes
compared, no prompt computed) beside banks whose every task must be computed.

    python -m benchmarks.recipe_bench            # Hub bank T=8,000, N=128, d=32,768, r=1 (1 GB, sparse)
    python -m benchmarks.recipe_bench --quick    # T=800 (100 MB)

Everything runs in this process through the Python API on the loopback Hub of tests/fakehub
(which counts the bytes it sends); each figure is the median of --repeat runs. Rows:

- build: a recipe taking 2 tasks of the Hub bank (renamed) and a local bank of 4 tasks; beside it
  the same operations called one by one (load, slice_tasks, rename, merge, save), the baseline.
- verify: the build's output rebuilt from its provenance and compared; beside it, the build.
- diff: a 2,000-task local bank against a copy (identical: bytes only) and against the same bank
  zero-padded to rank 3 (every task's two full prompts computed); beside them, computing every
  task's full prompt once (what diff avoids for identical tasks).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path

from benchmarks._timing import median_run
from tests.fakehub import Blob, HubServer
from tests.support.banks import sparse_bank

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    T, N, r, d = (800, 128, 1, 32_768) if args.quick else (8_000, 128, 1, 32_768)
    tmp = Path(tempfile.mkdtemp(prefix="mptkit-recipe-bench-"))
    os.chdir(tmp)
    (tmp / "hub").mkdir()
    names = [f"t{i:05d}" for i in range(T)]
    sparse_bank(tmp / "hub/adapter_model.safetensors", T=T, N=N, r=r, d=d, filled=(0, 3, 5, 7), names=names)
    cfg = json.loads((ROOT / "examples/bank/adapter_config.json").read_text())
    cfg.update(num_tasks=T, num_ranks=r, token_dim=d, num_virtual_tokens=N, num_transformer_submodules=1,
               task_type="CAUSAL_LM")  # fmt: skip
    (tmp / "hub/adapter_config.json").write_text(json.dumps(cfg))
    (tmp / "local").mkdir()  # the same seed: the same shared prompt
    sparse_bank(tmp / "local/adapter_model.safetensors", T=4, N=N, r=r, d=d, filled=range(4),
                names=["qa0", "qa1", "qa2", "qa3"])  # fmt: skip
    (tmp / "local/adapter_config.json").write_text(json.dumps({**cfg, "num_tasks": 4}))
    blob = Blob.file(tmp / "hub/adapter_model.safetensors")
    _ = blob.sha256
    (tmp / "recipe.yaml").write_text(
        "sources:\n  - bank: hf://owner/big\n    tasks: [t00003, t00005]\n    rename: {t00003: three}\n"
        "  - bank: local\n"
    )
    with HubServer() as hub:
        os.environ.update(hub.client_env(tmp))
        hub.commit("owner/big", {"adapter_config.json": (tmp / "hub/adapter_config.json").read_bytes(),
                                 "adapter_model.safetensors": blob})  # fmt: skip
        import mptkit

        rows = []

        def fresh(path):
            shutil.rmtree(path, ignore_errors=True)
            return path

        def served(fn):
            hub.clear()  # ranges are kept per opened file only: each run reads again
            fn()
            return hub.bytes_sent(r"\.safetensors$")

        build = lambda: mptkit.build("recipe.yaml", output=str(fresh(tmp / "built")))

        def by_hand():
            b = mptkit.rename(mptkit.slice_tasks(mptkit.load("hf://owner/big"), "t00003,t00005"), {"t00003": "three"})
            mptkit.save(mptkit.merge([b, mptkit.load("local")]), fresh(tmp / "hand"))

        for label, fn in (("build recipe.yaml", build), ("the same steps by hand (API)", by_hand)):
            wall, _ = median_run(fn, args.repeat)
            rows.append((label, wall, served(fn), "bytes from the Hub"))
        rows.append(("(the Hub file, whole)", None, blob.size, "bytes"))
        wall, rep = median_run(lambda: mptkit.verify(tmp / "built"), args.repeat)
        assert rep["identical"], rep
        rows.append(("verify built/", wall, served(lambda: mptkit.verify(tmp / "built")), "bytes from the Hub"))

        big = tmp / "big.safetensors"
        sparse_bank(big, T=2000, N=128, r=2, d=4096, filled=range(2000), seed=5)
        shutil.copy(big, tmp / "copy.safetensors")
        bank = mptkit.load(big)
        mptkit.save(mptkit.change_rank(bank, 3), tmp / "padded.safetensors")
        for label, other in (("diff, identical copy", "copy"), ("diff, rank zero-padded to 3", "padded")):
            wall, rep = median_run(
                lambda o=other: mptkit.diff(bank, mptkit.load(tmp / f"{o}.safetensors")), args.repeat
            )
            rows.append((label, wall, rep["bytes_compared"], f"bytes compared, {rep['prompts_computed']} prompts"))

        def all_prompts():  # one bank's prompts, float64, in the chunks diff uses
            import torch

            from mptkit._diff import CHUNK_BYTES
            from mptkit._numerics import task_prompts

            f64, t = torch.float64, bank.tensors
            pe = t["prompt_embeddings"].to_torch(dtype=f64).unsqueeze(0)
            step = max(1, CHUNK_BYTES // (2 * 8 * bank.num_tokens * bank.token_dim))
            for lo in range(0, bank.num_tasks, step):
                idx = list(range(lo, min(lo + step, bank.num_tasks)))
                task_prompts(pe, t["prefix_task_cols"].rows(idx).to_torch(dtype=f64),
                             t["prefix_task_rows"].rows(idx).to_torch(dtype=f64))  # fmt: skip

        wall, _ = median_run(all_prompts, args.repeat)
        rows.append(("(every task's full prompt, once)", wall, None, ""))
    print(f"Hub bank: T={T}, N={N}, r={r}, d={d}, F32 ({blob.size / 1e6:.0f} MB); median of {args.repeat}")
    print(f"{'what':<36} {'wall s':>8} {'amount':>14}")
    for label, wall, amount, unit in rows:
        w = f"{wall:8.3f}" if wall is not None else " " * 8
        a = f"{amount:14,}" if amount is not None else " " * 14
        print(f"{label:<36} {w} {a} {unit}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
