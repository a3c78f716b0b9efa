"""The one check every arithmetic command makes before it computes: the values it computes with are
finite. ``rank``, ``merge``/``add --refit``, ``add --init average``, ``derive --mode average``,
``similarity``, ``export`` and ``decompose`` call :func:`require_finite` (or :func:`require_finite_prompts`
for prompts that are not a bank's) on what they read; a NaN or an Inf in the shared prompt or a
task's factors, or a task whose full prompt overflows the dtype PEFT computes it in (finite factors
whose products do not fit), is refused with the tensor and the task named, before anything is
computed or written. Without it one NaN in the shared prompt became all-NaN factors for every task
(``rank``, exit 0), and an Inf reached the SVD as "internal error: _LinAlgError".

The data is read with numpy in chunks of tasks (:data:`CHUNK_BYTES`), so memory does not grow with
the bank, torch is not imported, and only the tasks the command uses are read.
"""

from __future__ import annotations

import math

from . import _numerics as numerics
from ._bank import PromptBank
from ._dtypes import shown
from .errors import InvalidBank

#: bytes of factors (or of full prompts, computed in float64) held at once
CHUNK_BYTES = 16 << 20


def require_finite(bank: PromptBank, operation: str, tasks=None, *, prompts: bool = False) -> None:
    """Refuse the NaN/Inf values ``operation`` would compute with: in the shared prompt and in the
    factors of ``tasks`` (indices; all by default); with ``prompts``, also in each of those tasks'
    full prompt ``prompt_embeddings * (cols @ rows)`` as PEFT computes it, in the bank's dtype (its
    factor product and the prompt must both fit that dtype). An :class:`InvalidBank` names the
    first offending tensor and task."""
    import numpy as np

    pe_a = bank.tensors["prompt_embeddings"]
    pe = numerics.as_float(pe_a.read(), pe_a.dtype, pe_a.numel).reshape(pe_a.shape)
    bad = int(np.count_nonzero(~np.isfinite(pe)))
    if bad:
        raise InvalidBank(
            f"{bank.where}: tensor 'prompt_embeddings' (the shared prompt, part of every task's prompt) holds "
            f"{_values(bad)}; {operation} computes with it and would give NaN/Inf results (mptkit validate "
            "--values lists them)"
        )
    if bank.shared_only:
        return
    idx = list(range(bank.num_tasks)) if tasks is None else list(tasks)
    cols_a, rows_a = bank.tensors["prefix_task_cols"], bank.tensors["prefix_task_rows"]
    N, r, d = bank.num_tokens, bank.rank, bank.token_dim
    per = cols_a.row_nbytes + rows_a.row_nbytes + (16 * N * d if prompts else 0)
    step = max(1, CHUNK_BYTES // max(per, 1))
    _, inf_at = numerics.limits(bank.dtype)
    pe64 = pe.astype(np.float64)
    for lo in range(0, len(idx), step):
        ks = idx[lo : lo + step]
        c = numerics.as_float(cols_a.rows(ks).read(), cols_a.dtype, len(ks) * N * r).reshape(len(ks), N, r)
        w = numerics.as_float(rows_a.rows(ks).read(), rows_a.dtype, len(ks) * r * d).reshape(len(ks), r, d)
        for key, x in (("prefix_task_cols", c), ("prefix_task_rows", w)):
            counts = np.count_nonzero(~np.isfinite(x.reshape(len(ks), -1)), axis=1)
            if counts.any():
                j = int(np.flatnonzero(counts)[0])
                raise InvalidBank(
                    f"{bank.where}: tensor {key!r} of task {_task(bank, ks[j])} holds {_values(int(counts[j]))}; "
                    f"{operation} computes with it and would give NaN/Inf results (mptkit validate --values lists "
                    "every task's)"
                )
        if not prompts:
            continue
        with np.errstate(over="ignore", invalid="ignore"):  # what overflows is found and named below
            product = np.matmul(c.astype(np.float64), w.astype(np.float64))
            for what, x in (("its factors' product cols @ rows", product), ("its full prompt", pe64 * product)):
                top = np.abs(x.reshape(len(ks), -1)).max(axis=1)
                over = ~(top < inf_at)
                if over.any():
                    j = int(np.flatnonzero(over)[0])
                    name, largest = shown(bank.dtype), numerics.limits(bank.dtype)[0]
                    v = float(top[j])
                    size = f"reaches {v:.4g}, beyond" if math.isfinite(v) else "overflows even float64, beyond"
                    raise InvalidBank(
                        f"{bank.where}: task {_task(bank, ks[j])}: {what} {size} {name}'s largest value "
                        f"{largest:.4g}, so PEFT computes it as Inf (prompt_embeddings * (cols @ rows) in {name}); "
                        f"{operation} would compute with Inf"
                    )


def require_finite_prompts(chunks, names, where, operation: str) -> None:
    """The same refusal for prompts that are not a bank's (``decompose``'s inputs): ``chunks``
    yields (indices, float64 torch tensor (t, N, d)); ``names``/``where`` name prompt k and its file."""
    import torch

    for idx, x in chunks:
        bad = (~torch.isfinite(x)).reshape(len(idx), -1).sum(1)
        if bool(bad.any()):
            j = int(bad.nonzero()[0])
            k = idx[j]
            raise InvalidBank(
                f"{where[k]}: prompt {names[k]!r} holds {_values(int(bad[j]))}; {operation} computes with it "
                "and would give NaN/Inf results"
            )


def _values(n: int) -> str:
    return f"{n:,} NaN/Inf value" + ("" if n == 1 else "s")


def _task(bank: PromptBank, k: int) -> str:
    return f"{k} ({bank.task_names[k]})" if bank.task_names else str(k)
