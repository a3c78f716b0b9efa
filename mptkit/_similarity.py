"""How alike a bank's tasks are: the cosine similarity between their full prompts
``prompt_embeddings * (prefix_task_cols[k] @ prefix_task_rows[k])``, and a heatmap of it."""

from __future__ import annotations

from . import _progress as progress
from ._bank import PromptBank, select_tasks
from .errors import UsageError

#: materialised prompts (float32) held at once: one block of rows, one of columns
ROW_BLOCK_BYTES = 256 << 20
COL_BLOCK_BYTES = 96 << 20
#: elements of the prompts' inner dimension per float32 product; the products are summed in float64
INNER = 1 << 16


def similarity(bank: PromptBank, tasks=None, *, top: int | None = None) -> dict:
    """``{"task_names": [names], "indices": [...], "matrix": [[cosine or None]], "nearest": [...],
    "top": [[{"task", "cosine"}, ...]]}`` for the selected tasks (all by default): the cosine
    similarity of the full prompts, each task's nearest other task, and its ``top`` nearest (3
    by default). A task whose prompt is all zeros has no cosine (None).

    The Gram matrix of the prompts is computed in blocks of tasks (:data:`ROW_BLOCK_BYTES`,
    :data:`COL_BLOCK_BYTES`: memory does not grow with T), each prompt materialised in float32 as
    PEFT computes it; the products run in float32 over slices of :data:`INNER` elements and are
    summed in float64, and the norms are float64 sums."""
    import torch

    bank.require_tasks("to compare")
    idx = select_tasks(bank, tasks, unique=True) if tasks is not None else list(range(bank.num_tasks))
    gram = gram_matrix(bank, idx)
    norms = gram.diagonal().clamp_min(0).sqrt()
    valid = (norms[:, None] > 0) & (norms[None, :] > 0)
    cos = (gram / (norms[:, None] * norms[None, :]).where(valid, 1.0)).clamp(-1.0, 1.0)
    n, names = len(idx), bank.names()
    matrix = cos.tolist()
    if not bool(valid.all()):
        for i, j in (~valid).nonzero().tolist():
            matrix[i][j] = None
    k = min(max(n - 1, 0), 3 if top is None else top)
    ranked = cos.where(valid & ~torch.eye(n, dtype=torch.bool), -torch.inf)
    best = ranked.topk(k, dim=1) if k else None
    top_lists = []
    for i in range(n):
        row = []
        for j in range(k):
            v = float(best.values[i, j])
            if v != -float("inf"):
                row.append({"task": names[idx[int(best.indices[i, j])]], "cosine": v})
        top_lists.append(row)
    nearest = [row[0] if row else None for row in top_lists]
    return {
        "task_names": [names[t] for t in idx],
        "indices": idx,
        "matrix": matrix,
        "nearest": nearest,
        "top": top_lists,
    }


def gram_matrix(bank: PromptBank, idx: list[int]):
    """The (len(idx), len(idx)) float64 Gram matrix of the tasks' full prompts, blockwise."""
    import torch

    N, d = bank.num_tokens, bank.token_dim
    per = 4 * N * d
    rows_per, cols_per = max(1, ROW_BLOCK_BYTES // per), max(1, COL_BLOCK_BYTES // per)
    pe = bank.tensors["prompt_embeddings"].to_torch(dtype=torch.float32)
    cols_a, rows_a = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]

    row_buf = torch.empty(min(rows_per, len(idx)), N, d)
    col_buf = torch.empty(min(cols_per, len(idx)), N, d)

    def prompts(ks, buf):  # pe * (cols @ rows), PEFT's order of operations, into a reused buffer
        c = cols_a.rows(ks).to_torch(dtype=torch.float32)
        r = rows_a.rows(ks).to_torch(dtype=torch.float32)
        out = torch.matmul(c, r, out=buf[: len(ks)])
        return out.mul_(pe).reshape(len(ks), N * d)

    n = len(idx)
    gram = torch.zeros(n, n, dtype=torch.float64)
    with progress.bar(n * (n + 1) // 2, "similarity", unit="pair", unit_scale=True) as bar:
        for i0 in range(0, n, rows_per):
            A = prompts(idx[i0 : i0 + rows_per], row_buf)
            gram[i0 : i0 + len(A), i0 : i0 + len(A)] = _products(A, A)
            bar.update(len(A) * (len(A) + 1) // 2)
            for j0 in range(i0 + len(A), n, cols_per):
                B = prompts(idx[j0 : j0 + cols_per], col_buf)
                block = _products(A, B)
                gram[i0 : i0 + len(A), j0 : j0 + len(B)] = block
                gram[j0 : j0 + len(B), i0 : i0 + len(A)] = block.T
                bar.update(len(A) * len(B))
                del B
            del A
    return gram


def _products(A, B):
    """``A @ B.T`` (float32 rows) as float32 products of :data:`INNER`-element slices summed in
    float64; the diagonal of ``A @ A.T`` as float64 sums of squares."""
    import torch

    out = torch.zeros(len(A), len(B), dtype=torch.float64)
    for lo in range(0, A.shape[1], INNER):
        out += (A[:, lo : lo + INNER] @ B[:, lo : lo + INNER].T).double()
    if A is B:
        out.diagonal().copy_(torch.stack([torch.linalg.vector_norm(a, dtype=torch.float64) for a in A]).square())
    return out


def heatmap(result: dict, *, title: str | None = None):
    """``result`` (from :func:`similarity`) as a heatmap :class:`~mptkit.formats.Image`, drawn by
    matplotlib when it is written (``mptkit.save(image, "heat.png")``; the format follows the
    suffix). Needs matplotlib (``pip install 'mptkit[plot]'``)."""
    from .formats import Image

    require_matplotlib()
    return Image(lambda fmt: _draw(result, title, fmt))


def require_matplotlib() -> None:
    """A :class:`UsageError` saying how to install matplotlib, where it is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed; install it with "
            "pip install 'mptkit[plot]' (or pip install matplotlib)"
        ) from None


def _draw(result: dict, title: str | None, fmt: str) -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.close("all")
    if fmt not in plt.gcf().canvas.get_supported_filetypes():
        plt.close("all")
        raise UsageError(f"matplotlib cannot write .{fmt} images; use .png, .svg or .pdf")
    plt.close("all")
    names = result["task_names"]
    n = len(names)
    values = [[float("nan") if v is None else v for v in row] for row in result["matrix"]]
    size = min(2 + 0.45 * n, 30)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    try:
        im = ax.imshow(values, cmap="viridis", vmin=-1, vmax=1)
        ax.set_xticks(range(n), names, rotation=90)
        ax.set_yticks(range(n), names)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if values[i][j] == values[i][j]:
                        ax.text(
                            j,
                            i,
                            f"{values[i][j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if values[i][j] < 0.5 else "black",
                        )
        fig.colorbar(im, ax=ax, label="cosine similarity of full prompts")
        ax.set_title(title or "task similarity")
        fig.tight_layout()
        out = io.BytesIO()
        fig.savefig(out, format=fmt)
        return out.getvalue()
    finally:
        plt.close(fig)
