"""Serving prompts from a bank at run time: :class:`TaskPrompts`, a ``torch.nn.Module``.

    prompts = TaskPrompts.from_bank("examples/bank", device="cuda")
    p = prompts(torch.tensor([0, 2, 2, 1]))          # (4, N, d): each row's task prompt

It holds PEFT's parameters under PEFT's names (``embedding.weight``, ``prefix_task_cols``,
``prefix_task_rows``), so its state dict is interchangeable with PEFT's ``MultitaskPromptEmbedding``,
and ``forward(indices, task_ids)`` is PEFT's call: the module can stand where PEFT's stands
(``peft_model.prompt_encoder["default"] = prompts``). The results equal PEFT's bit for bit (same
dtype, same operations), but each distinct task of a batch is computed once (``torch.unique``), not
once per row. ``cache()`` keeps every task's full prompt materialised, so a batch is one gather.

:func:`prepend` puts prompts in front of any Hugging Face model's input embeddings and extends its
attention mask, for models whose PEFT wrappers never pass ``task_ids`` (question answering, feature
extraction) or any model used without PEFT.

This module imports torch; ``import mptkit`` does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from .._bank import PromptBank
from .._numerics import task_prompts
from ..errors import UsageError


class TaskPrompts(nn.Module):
    """Task prompts ``prompt_embeddings * (prefix_task_cols[k] @ prefix_task_rows[k])``.

    Parameters do not require gradients by default (serving); call ``requires_grad_()`` to train
    them (then leave the cache off: cached prompts do not follow parameter updates).
    """

    def __init__(
        self,
        prompt_embeddings: torch.Tensor,
        prefix_task_cols: torch.Tensor,
        prefix_task_rows: torch.Tensor,
        *,
        task_names: Sequence[str] | None = None,
        num_virtual_tokens: int | None = None,
        num_transformer_submodules: int | None = None,
        config: dict | None = None,
    ):
        super().__init__()
        N, d = prompt_embeddings.shape
        if (
            prefix_task_cols.dim() != 3
            or prefix_task_rows.dim() != 3
            or prefix_task_cols.shape[1] != N
            or prefix_task_rows.shape[2] != d
            or prefix_task_cols.shape[0] != prefix_task_rows.shape[0]
            or prefix_task_cols.shape[2] != prefix_task_rows.shape[1]
        ):
            raise UsageError(
                f"factor shapes do not fit: prompt_embeddings {list(prompt_embeddings.shape)}, prefix_task_cols "
                f"{list(prefix_task_cols.shape)}, prefix_task_rows {list(prefix_task_rows.shape)}; "
                "expected (N, d), (T, N, r), (T, r, d)"
            )
        self.embedding = nn.Embedding(N, d, _weight=prompt_embeddings.detach().clone(), _freeze=True)
        self.prefix_task_cols = nn.Parameter(prefix_task_cols.detach().clone(), requires_grad=False)
        self.prefix_task_rows = nn.Parameter(prefix_task_rows.detach().clone(), requires_grad=False)
        self.task_names = list(task_names) if task_names else None
        self.num_virtual_tokens = num_virtual_tokens
        self.num_transformer_submodules = num_transformer_submodules
        #: the bank's adapter_config.json fields, kept for :meth:`to_bank`
        self.config = dict(config) if config else None
        self._cached: torch.Tensor | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def from_bank(
        cls,
        bank: PromptBank | str | os.PathLike,
        *,
        tasks=None,
        device=None,
        dtype: torch.dtype | None = None,
        cached: bool = False,
    ) -> TaskPrompts:
        """Load a bank (a path, adapter folder, ``hf://`` reference or :class:`PromptBank`, e.g. a
        derived one). ``tasks`` (indices, ranges or names: ``[3, 5]``, ``"sst2,mnli"``) keeps only
        those tasks, in that order, named as in the bank (by their indices in the bank where it names
        none); only their bytes are read, so from an ``hf://`` bank only their byte ranges are
        transferred. ``dtype`` defaults to torch's default dtype (float32), which is what PEFT's
        prompt encoder holds whatever the file's dtype; ``cached=True`` calls :meth:`cache`."""
        if not isinstance(bank, PromptBank):
            from .._io import load

            bank = load(bank)
        bank.require_tasks("to serve prompts for")
        arrays, names, config = dict(bank.tensors), bank.task_names, bank.config
        if tasks is not None:
            from .._bank import select_tasks

            idx = select_tasks(bank, tasks, unique=True)
            arrays = bank.task_rows(idx)
            names = [bank.names()[i] for i in idx]
            config = {**config, "num_tasks": len(idx)} if config else None
        dtype = dtype or torch.get_default_dtype()
        t = {k: a.to_torch(device, dtype) for k, a in arrays.items()}
        module = cls(
            t["prompt_embeddings"],
            t["prefix_task_cols"],
            t["prefix_task_rows"],
            task_names=names,
            num_virtual_tokens=bank.num_virtual_tokens,
            num_transformer_submodules=bank.num_submodules,
            config=config,
        )
        if cached:
            module.cache()
        return module

    def to_bank(self, dtype: torch.dtype | None = None) -> PromptBank:
        """The current parameters as a :class:`PromptBank` (e.g. after training), for
        :func:`mptkit.save`; ``dtype`` casts them (default: as held)."""
        from .._tensor import Array

        params = {
            "prompt_embeddings": self.embedding.weight,
            "prefix_task_cols": self.prefix_task_cols,
            "prefix_task_rows": self.prefix_task_rows,
        }
        tensors = {k: Array.from_torch(p.detach().to(dtype or p.dtype)) for k, p in params.items()}
        return PromptBank(tensors, self.task_names, dict(self.config) if self.config else None)

    # -- shapes ---------------------------------------------------------------------------------
    @property
    def num_tasks(self) -> int:
        return self.prefix_task_cols.shape[0]

    @property
    def num_tokens(self) -> int:
        """N, the prompt length (num_virtual_tokens x num_transformer_submodules)."""
        return self.embedding.weight.shape[0]

    @property
    def prompt_embeddings(self) -> torch.Tensor:
        return self.embedding.weight

    def task_ids(self, tasks: Sequence[int | str]) -> torch.Tensor:
        """A task-id tensor (on the module's device) from indices and/or task names."""
        names = self.task_names
        out = []
        for t in tasks:
            if isinstance(t, str) and not (t.isascii() and t.isdigit()):
                if not names or t not in names:
                    shown = ", ".join(names) if names else f"none; use indices 0 to {self.num_tasks - 1}"
                    raise UsageError(f"unknown task {t!r}: the prompts have {self.num_tasks} tasks (names: {shown})")
                out.append(names.index(t))
            else:
                i = int(t)
                if not 0 <= i < self.num_tasks:
                    raise UsageError(f"task {i} is out of range: the prompts have {self.num_tasks} tasks")
                out.append(i)
        return torch.tensor(out, dtype=torch.long, device=self.prefix_task_cols.device)

    # -- caching --------------------------------------------------------------------------------
    @torch.no_grad()
    def cache(self) -> TaskPrompts:
        """Materialise every task's full prompt (T, N, d) for serving: a batch becomes one gather.
        Call again after changing the parameters; :meth:`uncache` frees it."""
        self._cached = task_prompts(self.embedding.weight, self.prefix_task_cols, self.prefix_task_rows)
        return self

    def uncache(self) -> TaskPrompts:
        self._cached = None
        return self

    @property
    def cached(self) -> bool:
        return self._cached is not None

    def _apply(self, fn, *args, **kwargs):  # .to(), .cuda(), .half(): the cache follows
        super()._apply(fn, *args, **kwargs)
        if self._cached is not None:
            self.cache()
        return self

    # -- prompts --------------------------------------------------------------------------------
    def forward(self, indices_or_task_ids: torch.Tensor, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """``forward(task_ids)`` -> (B, N, d): row b is task ``task_ids[b]``'s prompt.

        ``forward(indices, task_ids)`` is PEFT's ``MultitaskPromptEmbedding.forward``: rows
        ``indices`` (B, N) of the shared prompt times the tasks' products; ``task_ids`` of length 1
        applies one task to every row."""
        if task_ids is None:
            return self.prompts(indices_or_task_ids)
        indices = indices_or_task_ids
        if self._is_identity(indices):
            out = self.prompts(task_ids)
            return out.expand(indices.shape[0], -1, -1).contiguous() if out.shape[0] != indices.shape[0] else out
        emb = self.embedding(indices)
        products, inverse, _ = self._distinct_products(task_ids)
        return emb * products.index_select(0, inverse)

    def _distinct_products(self, task_ids: torch.Tensor):
        """``cols[k] @ rows[k]`` for each distinct task of the batch, once: (products (U, N, d),
        inverse (B,) mapping rows to them, the distinct ids (U,))."""
        uniq, inverse = torch.unique(task_ids, return_inverse=True)
        products = torch.matmul(
            self.prefix_task_cols.index_select(0, uniq), self.prefix_task_rows.index_select(0, uniq)
        )
        return products, inverse, uniq

    def prompts(self, task_ids) -> torch.Tensor:
        """(B, N, d) prompts for ``task_ids`` (B,), each distinct task computed once."""
        if not isinstance(task_ids, torch.Tensor):
            task_ids = torch.as_tensor(task_ids, dtype=torch.long)
        task_ids = task_ids.to(self.prefix_task_cols.device).reshape(-1)
        if self._cached is not None and not (torch.is_grad_enabled() and self._trainable()):
            return self._cached.index_select(0, task_ids)
        products, inverse, uniq = self._distinct_products(task_ids)
        full = products * self.embedding.weight  # PEFT's product (elementwise, so the order is free)
        if uniq.shape[0] == task_ids.shape[0] and torch.equal(uniq, task_ids):
            return full
        return full.index_select(0, inverse)

    def _trainable(self) -> bool:
        return any(p.requires_grad for p in self.parameters())

    def _is_identity(self, indices: torch.Tensor) -> bool:
        """Whether every row of ``indices`` is 0..N-1 (what PEFT always passes)."""
        N = self.num_tokens
        if indices.dim() != 2 or indices.shape[1] != N:
            return False
        ar = torch.arange(N, device=indices.device)
        return bool(torch.equal(indices, ar.expand_as(indices)))


def prepend(
    model,
    prompts: torch.Tensor,
    *,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> dict:
    """Keyword arguments for ``model(**kwargs)`` with ``prompts`` (B, P, d) in front of the input.

    The input embeddings come from ``model.get_input_embeddings()`` when ``input_ids`` are given;
    the prompts are cast to their dtype; ``attention_mask`` gains P leading ones and
    ``token_type_ids`` P leading zeros, as PEFT does for prompt tuning. The model's outputs then
    have P extra leading positions (e.g. slice ``start_logits[:, P:]`` for question answering).
    For a seq2seq bank (two submodules) pass the encoder half, ``prompts[:, :num_virtual_tokens]``.
    """
    if (input_ids is None) == (inputs_embeds is None):
        raise UsageError("prepend needs exactly one of input_ids and inputs_embeds")
    if inputs_embeds is None:
        inputs_embeds = model.get_input_embeddings()(input_ids)
    B, P = inputs_embeds.shape[0], prompts.shape[1]
    if prompts.shape[0] == 1 and B != 1:
        prompts = prompts.expand(B, -1, -1)
    if prompts.shape[0] != B or prompts.shape[2] != inputs_embeds.shape[2]:
        raise UsageError(
            f"prompts {list(prompts.shape)} do not fit inputs_embeds {list(inputs_embeds.shape)}: "
            "expected the same batch size and hidden size"
        )
    out = {
        "inputs_embeds": torch.cat(
            (prompts.to(device=inputs_embeds.device, dtype=inputs_embeds.dtype), inputs_embeds), dim=1
        )
    }
    if attention_mask is not None:
        ones = torch.ones(B, P, dtype=attention_mask.dtype, device=attention_mask.device)
        out["attention_mask"] = torch.cat((ones, attention_mask), dim=1)
    if token_type_ids is not None:
        zeros = torch.zeros(B, P, dtype=token_type_ids.dtype, device=token_type_ids.device)
        out["token_type_ids"] = torch.cat((zeros, token_type_ids), dim=1)
    return out
