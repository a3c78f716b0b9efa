"""What combining banks (``merge``, ``add --from``, ``--refit``) checks and tells the user: whether
two banks were made for the same task type, base model and submodule split, which output rank is
allowed, and the output rank at which re-expressing a bank's tasks under another shared prompt is
exact rather than a fit."""

from __future__ import annotations

from typing import Callable, Sequence

from .bank import PromptBank
from .errors import IncompatibleBanks, UsageError
from .options import storage_dtype
from .tensor import Array

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
        raise UsageError(f"--rank {rank} is below the rank of {label(top)} ({top.rank}); combining banks only "
                         "pads ranks (which is exact): lower it afterwards with mptkit rank")
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
        return (f"at rank {rank} that is a fit (no rank makes it exact: the first shared prompt is zero where the "
                "other is not)")
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
            diffs.append(f"prompt length N differs ({label(first)} has N={first.num_tokens}, {label(b)} has N={b.num_tokens})")
        if b.token_dim != first.token_dim:
            diffs.append(f"hidden size d differs ({label(first)} has d={first.token_dim}, {label(b)} has d={b.token_dim})")
        if diffs:
            raise IncompatibleBanks(f"cannot combine {label(b)} with {label(first)}: " + "; ".join(diffs)
                                    + " (banks for different base models or prompt lengths do not mix)")
        split_a, split_b = _split(first), _split(b)
        if split_a and split_b and split_a != split_b and not allow_mismatch:
            raise IncompatibleBanks(
                f"cannot combine {label(b)} with {label(first)}: both have N={first.num_tokens} but "
                f"{label(first)} is {split_a[0]} virtual tokens x {split_a[1]} submodule(s) and {label(b)} is "
                f"{split_b[0]} x {split_b[1]} (their prompt rows mean different things; --allow-mismatch combines them anyway)")
        mismatches = config_mismatches(first, b, label)
        if mismatches and not allow_mismatch:
            raise IncompatibleBanks(
                f"cannot combine {label(b)} with {label(first)}: " + "; ".join(mismatches)
                + f"; banks trained for different tasks or models do not mix. Pass --allow-mismatch "
                f"(allow_mismatch=True) to combine them anyway: the output keeps {label(first)}'s config and task head")
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
    if bank.shared_only:
        raise UsageError(f"{bank.where} holds only the shared prompt (no tasks to edit)")
