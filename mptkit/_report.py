"""What ``mptkit report`` shows, computed once: the summary, each task's norms, non-finite counts and
rank use, the similarity of the tasks' full prompts in clustered order (every cell, or block means
for many tasks), each task's nearest tasks, and a 2-D map of the prompts.

The arithmetic is the one the other commands use: :func:`mptkit._similarity.gram_matrix` (the
blocked Gram of the full prompts) and :func:`mptkit._info.value_stats` (norms, non-finite counts).
Everything else here costs O(T^2) at most (the ordering, the map), against the Gram's O(T^2 N d).
Above :data:`DENSE_TASKS` tasks no T x T matrix is held: the figures come from each task's nearest
tasks in two blocked passes (:mod:`mptkit._report_large`), in memory that grows with T.

Sizes are bounded by construction, so the page stays usable for thousands of tasks:
:data:`HEATMAP_CELLS` cells a side at most (beyond that, each cell is a block of tasks: its mean,
min and max cosine), :data:`TOP_K` neighbours a task instead of a T x T matrix, names cut at
:data:`NAME_CHARS` characters, :data:`SINGULAR_VALUES` singular values a task.
"""

from __future__ import annotations

import math

from ._bank import PromptBank
from ._info import summary, value_stats
from .errors import UsageError

#: the heatmap holds at most this many cells a side; more tasks are averaged in contiguous blocks
HEATMAP_CELLS = 300
#: nearest tasks kept per task (the page's view of similarity for many tasks)
TOP_K = 5
#: characters of a task name (or of any text from the bank) that the page shows
NAME_CHARS = 200
#: singular values shown per task (the rank-use figures use them all)
SINGULAR_VALUES = 16
#: provenance entries shown (the latest ones)
PROVENANCE_ENTRIES = 100
#: bytes of float64 factors read at a time for the singular values
SV_CHUNK_BYTES = 16 << 20
#: up to this many tasks the figures come from the T x T cosine matrix (a few of them: about 160 MB
#: at 2,000 tasks; average-linkage clustering and classical scaling); above, from each task's
#: nearest in two blocked passes (:mod:`mptkit._report_large`, memory T x K: a dense 20,000 tiny
#: tasks once reached 6.4 GB)
DENSE_TASKS = 2000
#: the most tasks a report is made for: the page holds 1 MB + 1 kB a task (about 21 MB at 20,000,
#: which a browser still opens and filters), refused above, with its size
MAX_TASKS = 20_000


def cut(text, n: int = NAME_CHARS) -> str:
    text = str(text)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def num(x):
    """A float the page can carry in JSON: finite values rounded to 6 significant digits, others as
    the strings JavaScript's Number() reads ("NaN", "Infinity", "-Infinity")."""
    if x is None:
        return None
    x = float(x)
    if math.isfinite(x):
        return float(f"{x:.6g}")
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def rank_use(bank: PromptBank) -> list:
    """Per task, the singular values of ``cols[k] @ rows[k]`` (largest first; None for a task whose
    factors are not finite). ``C R = Qc (Rc Rr^T) Qr^T`` with ``C = Qc Rc`` and ``R^T = Qr Rr``, so
    they are the singular values of an r x r matrix: no N x d product is formed. float64."""
    import torch

    T, N, r, d = bank.num_tasks, bank.num_tokens, bank.rank, bank.token_dim
    cols_a, rows_a = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
    step = max(1, SV_CHUNK_BYTES // max(1, 8 * r * (N + d)))
    out: list = []
    for lo in range(0, T, step):
        ks = list(range(lo, min(lo + step, T)))
        C = cols_a.rows(ks).to_torch(dtype=torch.float64)
        R = rows_a.rows(ks).to_torch(dtype=torch.float64)
        good = torch.isfinite(C).flatten(1).all(1) & torch.isfinite(R).flatten(1).all(1)
        C, R = C.where(good[:, None, None], 0.0), R.where(good[:, None, None], 0.0)
        Rc = torch.linalg.qr(C, mode="r").R  # (t, min(N, r), r)
        Rr = torch.linalg.qr(R.transpose(1, 2), mode="r").R  # (t, min(d, r), r)
        sv = torch.linalg.svdvals(Rc @ Rr.transpose(1, 2))
        out += [s.tolist() if ok else None for s, ok in zip(sv, good.tolist())]
    return out


def rank_figures(sv: list[float] | None, shape: tuple[int, int]) -> dict:
    """How much of its rank a task uses: the numerical rank (singular values above
    ``s_max * max(N, d) * eps(float32)``, numpy's matrix_rank rule for float32 data) and the effective
    rank ``exp(entropy of s / sum(s))`` (Roy and Vetterli, 2007), which is r when all are equal."""
    if sv is None:
        return {"sv": None, "rank_used": None, "effective_rank": None}
    top = max(sv, default=0.0)
    tol = top * max(shape) * 1.1920929e-07
    used = sum(1 for s in sv if s > tol) if top > 0 else 0
    total = sum(sv)
    p = [s / total for s in sv if s > 0] if total > 0 else []
    eff = math.exp(-sum(x * math.log(x) for x in p)) if p else 0.0
    return {"sv": [num(s) for s in sv[:SINGULAR_VALUES]], "rank_used": used, "effective_rank": num(eff)}


def cosines(bank: PromptBank):
    """The (T, T) float64 cosine matrix of the full prompts (NaN where a prompt is zero or not finite)."""
    import numpy as np

    from ._similarity import gram_matrix

    gram = gram_matrix(bank, list(range(bank.num_tasks))).numpy()
    norms = np.sqrt(np.clip(np.diagonal(gram), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.clip(gram / np.outer(norms, norms), -1.0, 1.0)
    bad = ~(np.isfinite(norms) & (norms > 0))
    cos[bad, :] = np.nan
    cos[:, bad] = np.nan
    return cos


def cluster_order(cos) -> list[int]:
    """Tasks in the leaf order of an average-linkage clustering on ``1 - cosine`` (scipy's, which
    takes 0.2 s for 2,000 tasks; a task without a cosine is at distance 1 from all)."""
    import numpy as np

    T = len(cos)
    if T < 3:
        return list(range(T))
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    dist = np.clip(1.0 - np.nan_to_num(cos, nan=0.0), 0.0, 2.0)
    np.fill_diagonal(dist, 0.0)
    dist = (dist + dist.T) / 2
    return leaves_list(linkage(squareform(dist, checks=False), "average")).tolist()


def task_map(cos) -> list[list[float]]:
    """2-D coordinates of the tasks: the first two principal components of the unit-length full
    prompts, from their cosine matrix (classical scaling: the top eigenvectors of the doubly centred
    matrix, scaled by the square roots of their eigenvalues), so that the map agrees with the heatmap."""
    import numpy as np

    T = len(cos)
    c = np.nan_to_num(cos, nan=0.0)
    np.fill_diagonal(c, 1.0)
    B = c - c.mean(0, keepdims=True) - c.mean(1, keepdims=True) + c.mean()
    if T <= 64:
        vals, vecs = np.linalg.eigh(B)
        vals, vecs = vals[::-1][:2], vecs[:, ::-1][:, :2]
    else:
        from scipy.sparse.linalg import eigsh

        vals, vecs = eigsh(B, k=2, which="LA", v0=np.ones(T))
        vals, vecs = vals[::-1], vecs[:, ::-1]
    xy = vecs * np.sqrt(np.clip(vals, 0.0, None))
    if xy.shape[1] < 2:
        xy = np.pad(xy, ((0, 0), (0, 2 - xy.shape[1])))
    for j in range(2):  # a fixed sign: the largest coordinate is positive
        if xy[np.argmax(np.abs(xy[:, j])), j] < 0:
            xy[:, j] *= -1
    return [[num(a), num(b)] for a, b in xy]


def heatmap(cos, order: list[int]) -> dict:
    """The cosine matrix in ``order``: every cell when there are at most :data:`HEATMAP_CELLS`
    tasks, else contiguous blocks of ``size`` tasks with their mean, min and max cosine. Values are
    int16 (cosine x 10000, -32768 for none), little-endian, base64: 6 bytes a cell at most."""
    import numpy as np

    T = len(order)
    m = cos[np.ix_(order, order)] if T else cos
    size = max(1, math.ceil(T / HEATMAP_CELLS))
    n = math.ceil(T / size) if T else 0
    if size == 1:
        return {"cells": n, "size": size, "mean": _pack(m)}
    pad = np.full((n * size, n * size), np.nan)
    pad[:T, :T] = m
    blocks = pad.reshape(n, size, n, size).transpose(0, 2, 1, 3).reshape(n, n, size * size)
    ok = np.isfinite(blocks)
    count = ok.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(ok, blocks, 0.0).sum(axis=2) / count
    low, high = np.where(ok, blocks, np.inf).min(axis=2), np.where(ok, blocks, -np.inf).max(axis=2)
    return packed_blocks(n, size, mean, np.where(count > 0, low, np.nan), np.where(count > 0, high, np.nan))


def packed_blocks(n: int, size: int, mean, low, high) -> dict:
    """The heatmap's JSON for ``n`` x ``n`` blocks of ``size`` tasks (:func:`heatmap`)."""
    return {"cells": n, "size": size, "mean": _pack(mean), "min": _pack(low), "max": _pack(high)}


def _pack(a) -> str:
    import base64

    import numpy as np

    q = np.where(np.isfinite(a), np.round(np.nan_to_num(a) * 10000), -32768).astype("<i2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def neighbours(cos, k: int = TOP_K) -> list[list]:
    """Each task's ``k`` nearest other tasks: ``[[index, cosine], ...]``, most similar first."""
    import numpy as np

    T = len(cos)
    k = min(k, T - 1)
    if k <= 0:
        return [[] for _ in range(T)]
    ranked = np.nan_to_num(cos, nan=-np.inf)
    np.fill_diagonal(ranked, -np.inf)
    part = np.argpartition(-ranked, k - 1, axis=1)[:, :k]
    out = []
    for i in range(T):
        js = sorted(part[i].tolist(), key=lambda j: (-ranked[i, j], j))
        out.append([[j, num(cos[i, j])] for j in js if np.isfinite(ranked[i, j])])
    return out


def _provenance(entries) -> list:
    """The latest :data:`PROVENANCE_ENTRIES` entries, every text cut to :data:`NAME_CHARS`."""
    import json

    shown = []
    for e in (entries or [])[-PROVENANCE_ENTRIES:]:
        e = e if isinstance(e, dict) else {"operation": e}
        args = e.get("arguments") if isinstance(e.get("arguments"), dict) else {}
        sources = e.get("sources") if isinstance(e.get("sources"), list) else []
        shown.append(
            {
                "operation": cut(e.get("operation", "?")),
                "arguments": {cut(k, 60): cut(json.dumps(v, default=str)) for k, v in list(args.items())[:20]},
                "sources": [
                    {"name": cut(s.get("name", "?")), "sha256": cut(s.get("sha256", ""), 64)}
                    if isinstance(s, dict)
                    else {"name": cut(s), "sha256": ""}
                    for s in sources[:20]
                ],
                "version": cut(e.get("mptkit_version") or "", 40),
            }
        )
    return shown


def too_many_tasks(n: int) -> str:
    """Why no report of ``n`` tasks is made, with its size and what to ask instead."""
    return (
        f"a report of {n:,} tasks would be a page of about {(1 + n / 1000):,.0f} MB (1 MB + 1 kB a task); "
        f"mptkit makes reports of at most {MAX_TASKS:,} tasks. Report on fewer (mptkit slice BANK --tasks ...), "
        "or list each task's nearest with mptkit similarity BANK --top K (memory grows with tasks x K)"
    )


def report_data(bank: PromptBank, title: str | None = None) -> dict:
    """Everything the page shows, as JSON-ready values (see the module docstring for the bounds)."""
    import json

    if bank.num_tasks > MAX_TASKS:
        raise UsageError(f"{bank.where}: {too_many_tasks(bank.num_tasks)}")
    s = summary(bank)
    stats = value_stats(bank)
    T, names = bank.num_tasks, bank.names()
    data = {
        "title": cut(title or s["path"] or "prompt bank"),
        "summary": {
            k: s[k]
            for k in ("format", "kind", "dtype", "num_tasks", "num_virtual_tokens", "num_transformer_submodules")
        }
        | {
            "N": s["N"],
            "r": s["rank"],
            "d": s["d"],
            "task_type": cut(s["task_type"] or "") or None,
            "base_model": cut(s["base_model"] or "") or None,
            "named": bool(bank.task_names),
            "parameters": {k: num(v) for k, v in s["parameters"].items()},
            "tensors": s["tensors"],
            "nonfinite": stats["nonfinite"],
            "prompt_embeddings_norm": num(stats["prompt_embeddings_norm"]),
            "notes": [cut(n, 400) for n in s["notes"][:20]],
        },
        "config": {cut(k, 60): cut(json.dumps(v, default=str)) for k, v in list((bank.config or {}).items())[:200]},
        "provenance": _provenance(bank.provenance),
        "limits": {"heatmap_cells": HEATMAP_CELLS, "top_k": TOP_K, "name_chars": NAME_CHARS},
    }
    if bank.shared_only or T == 0:
        data["tasks"] = []
        return data
    svs = rank_use(bank)
    if T > DENSE_TASKS:
        from ._report_large import large_figures

        fig = large_figures(bank, TOP_K, HEATMAP_CELLS)
        order, near, heat = fig["order"], fig["near"], packed_blocks(*fig["heat"])
        xy = [[num(a), num(b)] for a, b in fig["xy"]]
        near = [[[j, num(c)] for j, c in row] for row in near]
    else:
        cos = cosines(bank)
        order, near, xy = cluster_order(cos), neighbours(cos), task_map(cos)
        heat = heatmap(cos, order)
    position = {k: i for i, k in enumerate(order)}
    shape = (bank.num_tokens, bank.token_dim)
    data["tasks"] = [
        {
            "index": k,
            "name": cut(names[k]),
            "prompt_norm": num(v["prompt_norm"]),
            "cols_norm": num(v["cols_norm"]),
            "rows_norm": num(v["rows_norm"]),
            "nonfinite": v["nonfinite_cols"] + v["nonfinite_rows"] + v["nonfinite_prompt"],
            "nonfinite_cols": v["nonfinite_cols"],
            "nonfinite_rows": v["nonfinite_rows"],
            "nonfinite_prompt": v["nonfinite_prompt"],
            "cluster_position": position[k],
            "nearest": near[k],
            "xy": xy[k],
        }
        | rank_figures(svs[k], shape)
        for k, v in enumerate(stats["tasks"])
    ]
    data["order"] = order
    data["heatmap"] = heat
    return data


# -- the output --------------------------------------------------------------------------------


def report(bank, *, title: str | None = None):
    """The report of ``bank`` (a :class:`PromptBank`, or anything :func:`mptkit.load` reads): a
    :class:`~mptkit.formats.Report` holding one self-contained HTML page (summary, provenance, task
    table, similarity heatmap, 2-D map) that a browser opens from disk and that fetches nothing.
    Write it with ``mptkit.save(report, "report.html")``. ``report.info`` says its size
    (``bytes``, ``num_tasks``, ``heatmap_cells``, ``block``)."""
    from ._report_html import render
    from .formats import Report

    if not isinstance(bank, PromptBank):
        from ._io import load

        title = title or str(bank)
        bank = load(bank)
    data = report_data(bank, title)
    page = render(data)
    heat = data.get("heatmap") or {"cells": 0, "size": 0}
    info = {"bytes": len(page), "num_tasks": bank.num_tasks, "heatmap_cells": heat["cells"], "block": heat["size"]}
    return Report(page, info, bank.source_paths())
