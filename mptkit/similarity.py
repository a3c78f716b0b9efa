"""How alike a bank's tasks are: the cosine similarity between their full prompts
``prompt_embeddings * (prefix_task_cols[k] @ prefix_task_rows[k])``, and a heatmap of it."""

from __future__ import annotations

import os

from . import numerics
from .bank import PromptBank, select_tasks
from .errors import UsageError

#: full prompts held in memory at once (float64), in bytes
_CHUNK_BYTES = 64 << 20


def similarity(bank: PromptBank, tasks=None) -> dict:
    """``{"tasks": [names], "indices": [...], "matrix": [[cosine or None]], "nearest": [...]}`` for
    the selected tasks (all by default). A task whose prompt is all zeros has no cosine (None)."""
    import torch

    if bank.shared_only:
        raise UsageError(f"{bank.where} holds only the shared prompt (no tasks to compare)")
    idx = select_tasks(bank, tasks, unique=True) if tasks is not None else list(range(bank.num_tasks))
    pe = bank.tensors["prompt_embeddings"].to_torch(dtype=torch.float64)
    cols_a, rows_a = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
    step = max(1, _CHUNK_BYTES // max(1, pe.numel() * 8))
    chunks = [idx[i : i + step] for i in range(0, len(idx), step)]

    def prompts(ks):
        c = cols_a.rows(ks).to_torch(dtype=torch.float64)
        r = rows_a.rows(ks).to_torch(dtype=torch.float64)
        return numerics.task_prompts(pe, c, r).reshape(len(ks), -1)

    gram = torch.zeros(len(idx), len(idx), dtype=torch.float64)
    pos = 0
    for i, ci in enumerate(chunks):
        a = prompts(ci)
        qos = pos
        for cj in chunks[i:]:
            b = a if cj is ci else prompts(cj)
            block = a @ b.T
            gram[pos : pos + len(ci), qos : qos + len(cj)] = block
            gram[qos : qos + len(cj), pos : pos + len(ci)] = block.T
            qos += len(cj)
        pos += len(ci)
    norms = gram.diagonal().clamp_min(0).sqrt()
    cos = gram / (norms[:, None] * norms[None, :])
    cos = cos.clamp(-1.0, 1.0)
    valid = (norms[:, None] > 0) & (norms[None, :] > 0)
    names = bank.names()
    matrix = [[float(cos[i, j]) if valid[i, j] else None for j in range(len(idx))] for i in range(len(idx))]
    nearest = []
    for i in range(len(idx)):
        others = [(matrix[i][j], j) for j in range(len(idx)) if j != i and matrix[i][j] is not None]
        best = max(others) if others else None
        nearest.append({"task": names[idx[best[1]]], "cosine": best[0]} if best else None)
    return {"tasks": [names[k] for k in idx], "indices": idx, "matrix": matrix, "nearest": nearest}


def plot_heatmap(result: dict, path: str | os.PathLike, *, force: bool = False, title: str | None = None,
                 inputs: tuple = ()) -> None:
    """Write ``result`` (from :func:`similarity`) as a heatmap image (the format follows the
    suffix, e.g. ``.png``); needs matplotlib (``pip install 'mptkit[plot]'``)."""
    from pathlib import Path

    from .formats import atomic

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib, which is not installed; install it with "
                         "pip install 'mptkit[plot]' (or pip install matplotlib)") from None
    target = Path(path)
    atomic.check_target(target, folder=False, force=force, inputs=inputs)
    fmt = target.suffix.lstrip(".").lower() or "png"
    if fmt not in plt.gcf().canvas.get_supported_filetypes():
        plt.close("all")
        raise UsageError(f"{target}: matplotlib cannot write .{fmt} images; use .png, .svg or .pdf")
    plt.close("all")
    names = result["tasks"]
    n = len(names)
    values = [[float("nan") if v is None else v for v in row] for row in result["matrix"]]
    size = min(2 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(values, cmap="viridis", vmin=-1, vmax=1)
    ax.set_xticks(range(n), names, rotation=90)
    ax.set_yticks(range(n), names)
    if n <= 20:
        for i in range(n):
            for j in range(n):
                if values[i][j] == values[i][j]:
                    ax.text(j, i, f"{values[i][j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if values[i][j] < 0.5 else "black")
    fig.colorbar(im, ax=ax, label="cosine similarity of full prompts")
    ax.set_title(title or "task similarity")
    fig.tight_layout()
    try:
        with atomic.atomic_file(target, replace=force) as f:
            fig.savefig(f, format=fmt)
    finally:
        plt.close(fig)
