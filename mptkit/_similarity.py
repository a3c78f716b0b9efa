"""How alike a bank's tasks are: the cosine similarity between their full prompts
``prompt_embeddings * (cols[k] @ rows[k])``, each task's nearest tasks, and a heatmap.

Memory follows what is asked for: each task's ``top`` nearest cost O(T x top), computed in blocks of
tasks (the products of a block of rows with a block of columns at a time, :data:`BLOCK`); the full
T x T matrix is built only when asked for (``matrix=True``: the CLI's ``--json`` without ``--top``,
and ``--plot``), and then for at most :data:`MAX_MATRIX_TASKS` tasks (a larger one is refused with
its size). ``--top 1`` of 20,000 tiny tasks once held the whole matrix and was killed at 24 GB."""

from __future__ import annotations

import math

from . import _progress as progress
from ._bank import PromptBank, select_tasks
from .errors import UsageError

#: materialised prompts (float32) held at once: one block of rows, one of columns
ROW_BLOCK_BYTES = 256 << 20
COL_BLOCK_BYTES = 96 << 20
#: elements of the prompts' inner dimension per float32 product; the products are summed in float64
INNER = 1 << 16
#: most tasks in a block of rows or of columns (a block's float64 products: at most BLOCK**2 * 8 bytes)
BLOCK = 1024
#: the full matrix is built for at most this many tasks (4 million cosines: 32 MB as float64, about
#: 130 MB as Python floats, 90 MB as JSON text)
MAX_MATRIX_TASKS = 2048
#: the nearest tasks listed per task by default
DEFAULT_TOP = 3


def similarity(bank: PromptBank, tasks=None, *, top: int | None = None, matrix: bool | None = None) -> dict:
    """``{"task_names": [names], "indices": [...], "nearest": [...], "top": [[{"task", "cosine"}, ...]]}``
    for the selected tasks (all by default): each task's nearest other task and its ``top`` nearest
    (3 by default), by the cosine similarity of the full prompts; with ``matrix`` (the default when
    ``top`` is not given) also ``"matrix"``, every cosine (None for a task whose prompt is all zeros).
    A matrix of more than :data:`MAX_MATRIX_TASKS` tasks is refused (ask for ``top`` instead).

    The prompts are materialised in float32 as PEFT computes them (a NaN/Inf, or a prompt PEFT
    computes as Inf, is refused first: :mod:`mptkit._finite`), each scaled by a power of two (exact,
    and it cannot change a cosine) so that no product overflows; the products run in float32 over
    slices of :data:`INNER` elements, summed in float64, in blocks of tasks."""
    import torch

    from ._finite import require_finite

    bank.require_tasks("to compare")
    idx = select_tasks(bank, tasks, unique=True) if tasks is not None else list(range(bank.num_tasks))
    n, names = len(idx), bank.names()
    want_matrix = top is None if matrix is None else bool(matrix)
    if want_matrix and n > MAX_MATRIX_TASKS:
        raise UsageError(f"{bank.where}: {matrix_too_big(n)}")
    k = min(max(n - 1, 0), DEFAULT_TOP if top is None else top)
    require_finite(bank, "similarity", idx, prompts=True)
    blocks = _Blocks(bank, idx)
    best = torch.full((n, k), -math.inf, dtype=torch.float64)
    where = torch.full((n, k), -1, dtype=torch.long)
    full = torch.full((n, n), math.nan, dtype=torch.float64) if want_matrix else None
    with progress.bar(n * (n + 1) // 2, "similarity", unit="pair", unit_scale=True) as bar:
        for i0, j0, cos in blocks.cosines():
            a, b = cos.shape
            if full is not None:
                full[i0 : i0 + a, j0 : j0 + b] = cos
                full[j0 : j0 + b, i0 : i0 + a] = cos.T
            if k:
                ranked = cos.nan_to_num_(nan=-math.inf)  # in place: the matrix has its copy
                if i0 == j0:
                    ranked.fill_diagonal_(-math.inf)  # a task is not its own neighbour
                _keep(best, where, i0, ranked, j0, k)
                if i0 != j0:
                    _keep(best, where, j0, ranked.T, i0, k)
            bar.update(a * b if i0 != j0 else a * (a + 1) // 2)
    top_lists = []
    for i in range(n):
        row = [
            {"task": names[idx[int(j)]], "cosine": float(v)}
            for v, j in zip(best[i].tolist(), where[i].tolist())
            if v != -math.inf
        ]
        top_lists.append(row)
    out: dict = {"task_names": [names[t] for t in idx], "indices": idx}
    if full is not None:
        out["matrix"] = [[None if math.isnan(v) else v for v in row] for row in full.tolist()]
    out["nearest"] = [row[0] if row else None for row in top_lists]
    out["top"] = top_lists
    return out


def matrix_too_big(n: int) -> str:
    """Why the full matrix of ``n`` tasks is not built, with its size and what to ask instead."""
    cells = n * n
    return (
        f"the full similarity matrix of {n:,} tasks is {cells:,} cosines ({_gb(cells * 8)} as float64, "
        f"about {_gb(cells * 22)} as JSON); mptkit builds it (--json without --top, --plot) for at most "
        f"{MAX_MATRIX_TASKS:,} tasks ({MAX_MATRIX_TASKS**2:,} cosines). Ask for each task's nearest with "
        "--top K (memory grows with tasks x K), or compare fewer tasks with --tasks"
    )


def _gb(nbytes: int) -> str:
    return f"{nbytes / 1e9:.3g} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.3g} MB"


def _keep(best, where, r0: int, cand, c0: int, k: int) -> None:
    """Merge the candidate cosines ``cand`` (rows r0.., columns c0..; -inf for none) into each
    row's ``k`` best: the block's own best ``k`` first, then those against the kept ones."""
    import torch

    rows = slice(r0, r0 + cand.shape[0])
    v, pos = cand.topk(min(k, cand.shape[1]), dim=1)
    values = torch.cat([best[rows], v], dim=1)
    found = torch.cat([where[rows], pos + c0], dim=1)
    v, pos = values.topk(k, dim=1)
    best[rows], where[rows] = v, found.gather(1, pos)


class _Blocks:
    """The tasks' prompts in blocks, each row scaled by a power of two (its largest value brought
    into [0.5, 1)): a cosine is unchanged by scaling, and the products can no longer overflow
    (prompts of 1e20 gave NaN cosines)."""

    def __init__(self, bank: PromptBank, idx: list[int], scale: bool = True):
        import torch

        self.idx, self.N, self.d = idx, bank.num_tokens, bank.token_dim
        per = 4 * self.N * self.d
        self.rows_per = max(1, min(BLOCK, ROW_BLOCK_BYTES // per))
        self.cols_per = max(1, min(BLOCK, COL_BLOCK_BYTES // per))
        self.pe = bank.tensors["prompt_embeddings"].to_torch(dtype=torch.float32)
        self.cols_a, self.rows_a = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
        self.row_buf = torch.empty(min(self.rows_per, len(idx)), self.N, self.d)
        self.col_buf = torch.empty(min(self.cols_per, len(idx)), self.N, self.d)
        self.exponent = torch.zeros(len(idx), dtype=torch.int32)
        self.norm = torch.zeros(len(idx), dtype=torch.float64)
        for lo in range(0, len(idx) if scale else 0, self.rows_per):  # scales and norms: a cosine needs both
            A = self._prompts(lo, self.rows_per, self.row_buf, scale=False)
            self.exponent[lo : lo + len(A)] = torch.frexp(A.abs().amax(dim=1)).exponent
            A = _scaled(A, self.exponent[lo : lo + len(A)])
            self.norm[lo : lo + len(A)] = torch.linalg.vector_norm(A, dim=1, dtype=torch.float64)

    def _prompts(self, lo: int, count: int, buf, scale: bool = True):
        """Prompts ``lo .. lo+count`` (positions in idx), pe * (cols @ rows) as PEFT computes them,
        into a reused buffer, as rows of N*d values (scaled unless ``scale`` is False)."""
        import torch

        ks = self.idx[lo : lo + count]
        c = self.cols_a.rows(ks).to_torch(dtype=torch.float32)
        r = self.rows_a.rows(ks).to_torch(dtype=torch.float32)
        out = torch.matmul(c, r, out=buf[: len(ks)]).mul_(self.pe).reshape(len(ks), self.N * self.d)
        return _scaled(out, self.exponent[lo : lo + len(ks)]) if scale else out

    def products(self):
        """(i0, j0, float64 products of tasks i0.. with tasks j0..) for each block pair with
        j0 >= i0 (the first of each row of blocks is its diagonal block)."""
        n = len(self.idx)
        for i0 in range(0, n, self.rows_per):
            A = self._prompts(i0, self.rows_per, self.row_buf)
            yield i0, i0, _products(A, A)
            for j0 in range(i0 + len(A), n, self.cols_per):
                yield i0, j0, _products(A, self._prompts(j0, self.cols_per, self.col_buf))

    def cosines(self):
        """:meth:`products` as cosines; NaN where a prompt is all zeros."""
        for i0, j0, G in self.products():
            yield i0, j0, _cosines(G, self.norm[i0 : i0 + G.shape[0]], self.norm[j0 : j0 + G.shape[1]])


def gram_matrix(bank: PromptBank, idx: list[int]):
    """The (len(idx), len(idx)) float64 Gram matrix of the tasks' full prompts (as PEFT computes
    them, not scaled, non-finite values included), blockwise: for ``mptkit report``, which needs
    every cosine, NaN ones too."""
    import torch

    n = len(idx)
    gram = torch.zeros(n, n, dtype=torch.float64)
    with progress.bar(n * (n + 1) // 2, "similarity", unit="pair", unit_scale=True) as bar:
        for i0, j0, G in _Blocks(bank, idx, scale=False).products():
            a, b = G.shape
            gram[i0 : i0 + a, j0 : j0 + b] = G
            gram[j0 : j0 + b, i0 : i0 + a] = G.T
            bar.update(a * b if i0 != j0 else a * (a + 1) // 2)
    return gram


def _scaled(x, exponent):
    """Each row of ``x`` (in place) times 2**-exponent, in two exact steps (one power of two of that
    size may not exist in float32)."""
    import torch

    half = torch.div(-exponent, 2, rounding_mode="floor")
    one = torch.ones(len(x), dtype=x.dtype)
    return x.mul_(torch.ldexp(one, half)[:, None]).mul_(torch.ldexp(one, -exponent - half)[:, None])


def _cosines(G, na, nb):
    """``G`` (float64 products) divided by the norms, in place; NaN where a norm is zero."""
    denom = na[:, None] * nb[None, :]
    zero = denom == 0
    return G.div_(denom.masked_fill_(zero, 1.0)).clamp_(-1.0, 1.0).masked_fill_(zero, math.nan)


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
