"""The runtime module against PEFT's MultitaskPromptEmbedding, in one run, on the same parameters.

    python -m benchmarks.runtime_bench                 # batch 32, N=100, d=4096, r=8, 4 distinct tasks
    python -m benchmarks.runtime_bench --quick         # small sizes (CI)
    python -m benchmarks.runtime_bench --device cuda   # on a GPU

Rows (median over --repeat calls, after warm-up; every result is checked bit-identical to PEFT's):
  peft                  PEFT's forward(indices, task_ids): gathers the shared prompt per row and
                        multiplies every row's factor pair
  mptkit (PEFT call)    TaskPrompts.forward(indices, task_ids): each distinct task once, then a gather
  mptkit                TaskPrompts.forward(task_ids)
  mptkit cached         TaskPrompts with cache(): every task's prompt materialised; one gather
  copy (floor)          a plain copy of a (B, N, d) tensor: the least any method must do
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._timing import median_run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes")
    ap.add_argument("--batch", type=int)
    ap.add_argument("--tokens", type=int, help="N, virtual tokens")
    ap.add_argument("--dim", type=int, help="d, hidden size")
    ap.add_argument("--rank", type=int)
    ap.add_argument("--tasks", type=int, help="T, tasks in the bank")
    ap.add_argument("--distinct", type=int, help="distinct tasks per batch")
    ap.add_argument("--repeat", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    quick = dict(batch=8, tokens=20, dim=256, rank=4, tasks=8, distinct=4, repeat=20)
    full = dict(batch=32, tokens=100, dim=4096, rank=8, tasks=16, distinct=4, repeat=30)
    cfg = {
        k: getattr(args, k) if getattr(args, k) is not None else v for k, v in (quick if args.quick else full).items()
    }
    B, N, d, r, T, U = (cfg[k] for k in ("batch", "tokens", "dim", "rank", "tasks", "distinct"))

    from peft import MultitaskPromptTuningConfig
    from peft.tuners.multitask_prompt_tuning import MultitaskPromptEmbedding

    from mptkit.serve._runtime import TaskPrompts

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    pcfg = MultitaskPromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=N, num_transformer_submodules=1, token_dim=d, num_tasks=T, num_ranks=r
    )
    peft_mod = MultitaskPromptEmbedding(pcfg, torch.nn.Embedding(2, d)).to(dev).eval()
    ours = TaskPrompts(peft_mod.embedding.weight, peft_mod.prefix_task_cols, peft_mod.prefix_task_rows).to(dev).eval()
    cached = (
        TaskPrompts(peft_mod.embedding.weight, peft_mod.prefix_task_cols, peft_mod.prefix_task_rows).to(dev).cache()
    )

    g = torch.Generator().manual_seed(1)
    chosen = torch.randperm(T, generator=g)[:U]
    task_ids = chosen[torch.randint(0, U, (B,), generator=g)].to(dev)
    indices = torch.arange(N, device=dev).unsqueeze(0).expand(B, -1)

    with torch.no_grad():
        ref = peft_mod(indices, task_ids)
        for name, out in (
            ("mptkit (PEFT call)", ours(indices, task_ids)),
            ("mptkit", ours(task_ids)),
            ("mptkit cached", cached(task_ids)),
        ):
            assert torch.equal(out, ref), f"{name} differs from PEFT"
        rows = [
            ("peft", lambda: peft_mod(indices, task_ids)),
            ("mptkit (PEFT call)", lambda: ours(indices, task_ids)),
            ("mptkit", lambda: ours(task_ids)),
            ("mptkit cached", lambda: cached(task_ids)),
            ("copy (floor)", lambda: ref.clone()),
        ]
        results = [(name, median_run(fn, cfg["repeat"], warmup=3, sync=sync)[0]) for name, fn in rows]

    out_bytes = ref.numel() * ref.element_size()
    print(
        f"runtime: batch {B}, N={N}, d={d}, r={r}, T={T}, {U} distinct tasks per batch, float32, {dev}, "
        f"{torch.get_num_threads()} threads; output {out_bytes / 1e6:.1f} MB; median of {cfg['repeat']}"
    )
    print(f"{'method':<20}{'median ms':>11}{'vs peft':>9}{'out GB/s':>10}")
    base = results[0][1]
    for name, t in results:
        print(f"{name:<20}{t * 1e3:>11.3f}{base / t:>8.1f}x{out_bytes / t / 1e9:>10.2f}")


if __name__ == "__main__":
    main()
