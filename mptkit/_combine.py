"""What combining banks (``merge``, ``add --from``, ``--refit``) checks and tells the user: whether
two banks were made for the same task type, base model and submodule split, which output rank is
allowed, and the output rank at which re-expressing a bank's tasks under another shared prompt is
exact rather than a fit."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import _fit as fit, _numerics as numerics
from ._bank import PromptBank
from ._dtypes import storage_dtype, torch_dtype
from ._tensor import Array
from .errors import IncompatibleBanks, UsageError

#: the config fields whose difference means two banks were trained for different models or tasks
COMPATIBILITY_FIELDS = (("task_type", "task_type"), ("base_model_name_or_path", "base model"))


def config_mismatches(a: PromptBank, b: PromptBank, label: Callable | None = None) -> list[str]:
    """How the configs of ``a`` and ``b`` disagree on task_type, base model and
    num_transformer_submodules, in words (a field only one of them knows is not compared)."""
    label = label or (lambda x: x.where)
    out = []
    for key, what in COMPATIBILITY_FIELDS:
        va, vb = (a.config or {}).get(key), (b.config or {}).get(key)
        if va and vb and str(va).rstrip("/") != str(vb).rstrip("/"):
            out.append(f"{what} differs ({label(a)}: {va}, {label(b)}: {vb})")
    sa, sb = a.num_submodules, b.num_submodules
    if sa and sb and sa != sb:
        out.append(f"num_transformer_submodules differs ({label(a)}: {sa}, {label(b)}: {sb})")
    return out


def output_rank(banks: Sequence[PromptBank], rank: int | None, label: Callable) -> int:
    """The output rank of combining ``banks``: ``rank``, or the largest input rank. Never below an
    input's rank (combining only zero-pads, which is exact)."""
    top = max(banks, key=lambda b: b.rank)
    if rank is None:
        return top.rank
    if rank < top.rank:
        raise UsageError(
            f"--rank {rank} is below the rank of {label(top)} ({top.rank}); combining banks only "
            "pads ranks (which is exact): lower it afterwards with mptkit rank"
        )
    return rank


def exact_refit_rank(pe_new: Array, pe_old: Array, rank: int) -> int | None:
    """An output rank at which re-expressing rank-``rank`` tasks made for the shared prompt
    ``pe_old`` under ``pe_new`` is exact. Task k then needs the factor
    ``(old / new) * (cols[k] @ rows[k])``, whose rank is at most rank(old / new) x ``rank`` (a
    Hadamard product's rank is at most the product of the ranks), and at most min(N, d). None when
    no rank is exact (``pe_new`` is zero where ``pe_old`` is not)."""
    import torch

    f64 = torch.float64
    W, old = pe_new.to_torch(dtype=f64), pe_old.to_torch(dtype=f64)
    nz = W != 0
    if bool((old[~nz] != 0).any()):
        return None
    ratio = torch.where(nz, old / torch.where(nz, W, 1.0), 0.0)
    return max(1, min(int(torch.linalg.matrix_rank(ratio)) * rank, *W.shape))


def exact_hint(need: int | None, rank: int) -> str:
    """Whether a refit at ``rank`` is exact, and if not which ``--rank`` makes it so."""
    if need is None:
        return (
            f"at rank {rank} that is a fit (no rank makes it exact: the first shared prompt is zero where the "
            "other is not)"
        )
    if need <= rank:
        return f"at rank {rank} that is exact"
    return f"at rank {rank} that is a fit (lossy); an output rank of {need} (--rank {need}) makes it exact"


def check_compatible(banks: Sequence[PromptBank], dtype: str | None, allow_mismatch: bool = False) -> str:
    """Same N, d and submodule split; the same task_type, base model and submodules where known
    (unless ``allow_mismatch``); one dtype or ``dtype``. Returns the output dtype."""
    first, label = banks[0], labeller(banks)
    for b in banks:
        need_tasks(b)
    for b in banks[1:]:
        diffs = []
        if b.num_tokens != first.num_tokens:
            diffs.append(
                f"prompt length N differs ({label(first)} has N={first.num_tokens}, {label(b)} has N={b.num_tokens})"
            )
        if b.token_dim != first.token_dim:
            diffs.append(
                f"hidden size d differs ({label(first)} has d={first.token_dim}, {label(b)} has d={b.token_dim})"
            )
        if diffs:
            raise IncompatibleBanks(
                f"cannot combine {label(b)} with {label(first)}: "
                + "; ".join(diffs)
                + " (banks for different base models or prompt lengths do not mix)"
            )
        split_a, split_b = _split(first), _split(b)
        if split_a and split_b and split_a != split_b and not allow_mismatch:
            raise IncompatibleBanks(
                f"cannot combine {label(b)} with {label(first)}: both have N={first.num_tokens} but "
                f"{label(first)} is {split_a[0]} virtual tokens x {split_a[1]} submodule(s) and {label(b)} is "
                f"{split_b[0]} x {split_b[1]} (their prompt rows mean different things; "
                "--allow-mismatch combines them anyway)"
            )
        mismatches = config_mismatches(first, b, label)
        if mismatches and not allow_mismatch:
            raise IncompatibleBanks(
                f"cannot combine {label(b)} with {label(first)}: "
                + "; ".join(mismatches)
                + f"; banks trained for different tasks or models do not mix. Pass --allow-mismatch "
                f"(allow_mismatch=True) to combine them anyway: the output keeps {label(first)}'s config and task head"
            )
    if dtype is not None:
        return storage_dtype(dtype)
    found = {b.dtype for b in banks}
    if len(found) > 1:
        listing = ", ".join(f"{label(b)} {b.dtype}" for b in banks)
        raise IncompatibleBanks(f"the banks have different dtypes ({listing}); give --dtype to convert them to one")
    return first.dtype


def _split(bank: PromptBank):
    v, s = bank.num_virtual_tokens, bank.num_submodules
    return (v, s) if v and s else None


def labeller(banks: Sequence[PromptBank]):
    """How messages name each of several banks: its path, else its position."""
    labels = {id(b): b.source.path if b.source else f"bank {i + 1}" for i, b in enumerate(banks)}
    return lambda b: labels.get(id(b), b.where)


def need_tasks(bank: PromptBank) -> None:
    bank.require_tasks("to edit")


# -- the combined tensors ---------------------------------------------------------------------
def combine(
    banks: Sequence[PromptBank], out_dtype: str, refit: bool, max_error: float | None, out_rank: int | str | None = None
):
    """The merged tensors and the refit report. Bytes only when dtype, rank and shared prompt agree.
    ``out_rank``: the output rank (default the largest; "auto": each refit task's smallest rank
    within ``max_error``, the output rank then being the largest of all)."""
    auto, label = out_rank == "auto", labeller(banks)
    rank = output_rank(banks, None if auto else out_rank, label)
    converted = [convert(b, out_dtype, rank) for b in banks]
    pe0 = converted[0]["prompt_embeddings"]
    base = bytes(pe0.read())
    differing = [i for i in range(1, len(banks)) if bytes(converted[i]["prompt_embeddings"].read()) != base]
    results: dict = {}
    if differing and not refit:
        i = differing[0]
        raise IncompatibleBanks(
            f"the shared prompts differ: {label(banks[i])}'s prompt_embeddings is not {label(banks[0])}'s "
            f"({numerics.describe_difference(pe0, converted[i]['prompt_embeddings'])}); its tasks' "
            "prompts would change. "
            f"Pass --refit to re-express them under the first bank's shared prompt: "
            f"{exact_hint(exact_refit_rank(pe0, converted[i]['prompt_embeddings'], banks[i].rank), rank)}"
        )
    top = rank  # the output rank; "auto" refits may need more than the inputs
    if differing:
        from ._finite import require_finite

        require_finite(banks[0], "the refit", tasks=[])  # the shared prompt the others are re-expressed under
        for i in differing:
            require_finite(banks[i], "the refit", prompts=True)
        errors = {}
        for i in differing:
            cols, rows, ranks, errs = _refit(pe0, converted[i], ("auto" if auto else rank, max_error))
            converted[i] = {"prompt_embeddings": pe0, "prefix_task_cols": cols, "prefix_task_rows": rows}
            offset = sum(b.num_tasks for b in banks[:i])
            names = banks[i].names()
            for k, e in enumerate(errs):
                errors[str(offset + k)] = {
                    "source": label(banks[i]),
                    "task": names[k],
                    "relative_error": e,
                    **({"rank": ranks[k]} if auto else {}),
                }
        results["refit"] = errors
        worst = max(errors.values(), key=lambda x: x["relative_error"])
        needs = [exact_refit_rank(pe0, banks[i].tensors["prompt_embeddings"], banks[i].rank) for i in differing]
        need = None if None in needs else max(needs)
        top = results["rank"] = max(c["prefix_task_cols"].shape[2] for c in converted)
        if need is not None and need > top and worst["relative_error"] > 0:
            results["exact_rank"] = need
        if max_error is not None and worst["relative_error"] > max_error:
            exact = f"; an output rank of {need} (--rank {need}) makes this refit exact" if need and need > rank else ""
            raise IncompatibleBanks(
                f"refit error too large: task {worst['task']} of {worst['source']} is re-expressed with relative "
                f"error {worst['relative_error']:.3g}, above --max-error {max_error:g}{exact}; nothing was written"
            )
    converted = [c if c["prefix_task_cols"].shape[2] == top else _pad(c, top) for c in converted]
    parts = {
        "prompt_embeddings": pe0,
        "prefix_task_cols": Array.cat([c["prefix_task_cols"] for c in converted]),
        "prefix_task_rows": Array.cat([c["prefix_task_rows"] for c in converted]),
    }
    return parts, results


def _pad(tensors: dict[str, Array], rank: int) -> dict[str, Array]:
    cols, rows = numerics.pad_rank(tensors["prefix_task_cols"].to_torch(), tensors["prefix_task_rows"].to_torch(), rank)
    return {**tensors, "prefix_task_cols": Array.from_torch(cols), "prefix_task_rows": Array.from_torch(rows)}


def convert(bank: PromptBank, dtype: str, rank: int) -> dict[str, Array]:
    """The bank's tensors in ``dtype`` with factors zero-padded to ``rank`` (bytes when neither changes)."""
    t = dict(bank.tensors)
    if bank.dtype == dtype and bank.rank == rank:
        return t
    tdtype = torch_dtype(dtype)

    def cast(key):  # values beyond a narrower dtype's range: refused, or clamped (numerics.in_range)
        return numerics.in_range(t[key].to_torch(), dtype, f"{bank.where}: tensor {key!r}").to(tdtype)

    cols, rows = numerics.pad_rank(cast("prefix_task_cols"), cast("prefix_task_rows"), rank)
    return {
        "prompt_embeddings": numerics.cast(t["prompt_embeddings"], dtype, f"{bank.where}: tensor 'prompt_embeddings'"),
        "prefix_task_cols": Array.from_torch(cols),
        "prefix_task_rows": Array.from_torch(rows),
    }


def _refit(pe_new: Array, tensors: dict[str, Array], rank):
    """Re-express every task of ``tensors`` under ``pe_new``: new factors, ranks, relative errors."""
    cols, rows, ranks, errors = fit.refit(
        pe_new,
        tensors["prompt_embeddings"],
        tensors["prefix_task_cols"],
        tensors["prefix_task_rows"],
        rank[0],
        max_error=rank[1],
    )
    return Array.from_torch(cols), Array.from_torch(rows), ranks, errors
