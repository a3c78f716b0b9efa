"""What ``inspect`` and ``validate`` report about a bank: header facts and value statistics."""

from __future__ import annotations

from . import numerics
from .bank import PromptBank


def summary(bank: PromptBank) -> dict:
    """Header-level facts: format, shapes, names, parameter counts, metadata, provenance."""
    N, d, T, r = bank.num_tokens, bank.token_dim, bank.num_tasks, bank.rank
    cfg = bank.config or {}
    shared = N * d
    per_task = (N * r + r * d) if r else 0
    total = shared + T * per_task
    out = {
        "path": bank.source.path if bank.source else None,
        "format": bank.source.format if bank.source else None,
        "file": bank.source.data_file if bank.source else None,
        "file_size": bank.source.file_size if bank.source else None,
        "kind": "shared-only" if bank.shared_only else ("single-task" if T == 1 else "bank"),
        "dtype": bank.dtype,
        "num_tasks": T,
        "num_virtual_tokens": bank.num_virtual_tokens,
        "num_transformer_submodules": bank.num_submodules,
        "N": N,
        "r": r,
        "d": d,
        "task_type": cfg.get("task_type"),
        "base_model": cfg.get("base_model_name_or_path"),
        "task_names": bank.task_names,
        "parameters": {
            "shared": shared,
            "per_task": per_task,
            "total": total,
            "as_separate_prompts": T * shared,
            "saving": (1 - total / (T * shared)) if T else None,
        },
        "tensors": {k: {"dtype": a.dtype, "shape": list(a.shape)} for k, a in bank.tensors.items()},
        "metadata": bank.metadata,
        "provenance": bank.provenance,
        "notes": bank.notes,
    }
    return out


def value_stats(bank: PromptBank, chunk_tasks: int = 64) -> dict:
    """Reads the data (torch): non-finite counts per tensor and per task, per-task norms of the
    factors and of the full prompt ``prompt_embeddings * (cols[k] @ rows[k])``."""
    import torch

    pe = bank.tensors["prompt_embeddings"].to_torch().double()
    out = {"nonfinite": {"prompt_embeddings": int((~torch.isfinite(pe)).sum())}, "tasks": []}
    out["prompt_embeddings_norm"] = float(torch.linalg.vector_norm(pe))
    if bank.shared_only:
        return out
    cols_a, rows_a = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
    bad_cols = bad_rows = 0
    names = bank.names()
    for lo in range(0, bank.num_tasks, chunk_tasks):
        idx = list(range(lo, min(lo + chunk_tasks, bank.num_tasks)))
        cols = cols_a.rows(idx).to_torch().double()
        rows = rows_a.rows(idx).to_torch().double()
        full = numerics.task_prompts(pe, cols, rows)
        for j, k in enumerate(idx):
            nc = int((~torch.isfinite(cols[j])).sum())
            nr = int((~torch.isfinite(rows[j])).sum())
            bad_cols += nc
            bad_rows += nr
            out["tasks"].append({
                "task": k,
                "name": names[k],
                "cols_norm": float(torch.linalg.vector_norm(cols[j])),
                "rows_norm": float(torch.linalg.vector_norm(rows[j])),
                "prompt_norm": float(torch.linalg.vector_norm(full[j])),
                "nonfinite_cols": nc,
                "nonfinite_rows": nr,
                "nonfinite_prompt": int((~torch.isfinite(full[j])).sum()),
            })
    out["nonfinite"]["prefix_task_cols"] = bad_cols
    out["nonfinite"]["prefix_task_rows"] = bad_rows
    return out
