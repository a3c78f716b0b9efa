"""Prompt embeddings for engines that take ``inputs_embeds``: :class:`PromptEmbedder`.

    embedder = PromptEmbedder.from_pretrained("bank/", "path/to/llama")   # or hf://owner/model
    x = embedder("sst2", input_ids)               # (N + len(input_ids), d): what PEFT feeds the model
    body = embedder.vllm_request("sst2", input_ids, model="llama", max_tokens=32)   # vLLM Completions
    llm.generate(embedder.vllm_prompt("sst2", input_ids), params)                  # vLLM offline

A causal LM under PEFT's ``MULTITASK_PROMPT_TUNING`` is fed ``cat(prompt_k.to(dtype),
embed_tokens(input_ids))``: task k's prompt computed in float32 (PEFT's prompt encoder holds float32
whatever the file's dtype; the factors' matmul, then the elementwise product), cast to the dtype of
the model's input embeddings, then the token embeddings. This module builds exactly that tensor,
bit for bit, from the bank and the base model's input-embedding matrix alone
(:mod:`mptkit.formats._embeddings`): no model is loaded, only that one tensor is read (mapped from
a local file, or read once by range from the Hub), and only the bank tasks asked for.

vLLM (since v0.10, where prompt adapters were removed) takes such tensors as prompt embeddings:
offline ``{"prompt_embeds": tensor}`` of shape (sequence, hidden), online the Completions API's
``prompt_embeds`` field, a base64 string of a ``torch.save``d tensor that the server decodes with
``torch.load(weights_only=True)`` and casts to the model's dtype (server flag
``--enable-prompt-embeds``). Seq2seq banks are refused: PEFT puts one half of their prompt before
the encoder's input and the other before the decoder's, which a decoder-only prompt cannot carry.
"""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence

import torch

from .._bank import PromptBank, select_tasks
from .._numerics import task_prompts
from ..errors import InvalidModel, UsageError
from ..formats._embeddings import SCALED_TYPES, InputEmbeddings


class PromptEmbedder:
    """``embedder(task, input_ids)`` -> the ``inputs_embeds`` PEFT's MPT model feeds a causal LM."""

    def __init__(
        self,
        bank: PromptBank,
        embeddings: InputEmbeddings,
        *,
        dtype: torch.dtype | str | None = None,
        device=None,
        tasks=None,
        preload: bool | None = None,
    ):
        _check(bank, embeddings)
        self.bank, self.embeddings = bank, embeddings
        if isinstance(dtype, str):
            if dtype not in ("float32", "bfloat16", "float16", "float64"):
                raise UsageError(f"dtype must be one of float32, bfloat16, float16, float64, found {dtype!r}")
            dtype = getattr(torch, dtype)
        #: the dtype of the model's input embeddings (as stored, unless told otherwise)
        self.dtype = dtype or {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}.get(
            embeddings.dtype, torch.float64
        )
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._shared: torch.Tensor | None = None
        self._prompts: dict[int, torch.Tensor] = {}
        self._allowed = None if tasks is None else select_tasks(bank, tasks, unique=True)
        self._preload = embeddings.mapped() is None if preload is None else preload
        for k in self._allowed or []:
            self._prompt(k)

    @classmethod
    def from_pretrained(
        cls,
        bank: PromptBank | str | os.PathLike,
        base_model: str | os.PathLike,
        *,
        tasks=None,
        dtype: torch.dtype | str | None = None,
        device=None,
        preload: bool | None = None,
        embedding_key: str | None = None,
    ) -> PromptEmbedder:
        """``bank``: any bank mptkit reads (``hf://`` too) or a :class:`~mptkit.PromptBank`.
        ``base_model``: a model folder, a ``model.safetensors``, a sharded index or
        ``hf://owner/model[@rev]``; only its input-embedding tensor is read (``embedding_key``
        names it where its config and the usual names do not tell). ``tasks`` (indices, ranges or
        names) limits the tasks served and computes their prompts now; otherwise each task's rows
        are read on its first request. ``dtype``: the model's dtype when it is not the stored one
        (``torch_dtype=`` of ``from_pretrained``, vLLM's ``--dtype``). ``preload`` reads the whole
        matrix on first use (the default for a model on the Hub: one range request instead of one
        per distinct token); a local file is memory-mapped and read row by row."""
        from .._io import load, load_embeddings

        if not isinstance(bank, PromptBank):
            bank = load(bank)
        return cls(
            bank,
            load_embeddings(base_model, embedding_key=embedding_key),
            dtype=dtype,
            device=device,
            tasks=tasks,
            preload=preload,
        )

    # -- shapes -------------------------------------------------------------------------------
    @property
    def num_tokens(self) -> int:
        """N, the prompt's length."""
        return self.bank.num_tokens

    @property
    def hidden_size(self) -> int:
        return self.embeddings.hidden_size

    # -- the pieces ---------------------------------------------------------------------------
    def task_index(self, task: int | str) -> int:
        k = select_tasks(self.bank, [task], allow_ranges=False)[0]
        if self._allowed is not None and k not in self._allowed:
            names = self.bank.names()
            shown = ", ".join(names[i] for i in self._allowed)
            raise UsageError(f"task {task!r} is not one this embedder serves (tasks={shown})")
        return k

    def prompt(self, task: int | str) -> torch.Tensor:
        """Task ``task``'s prompt (N, d) in float32, as PEFT's prompt encoder computes it."""
        k = self.task_index(task)
        return self._float_prompt(k)

    def _float_prompt(self, k: int) -> torch.Tensor:
        if self._shared is None:
            self._shared = self.bank.tensors["prompt_embeddings"].to_torch(self.device, torch.float32)
        cols = self.bank.tensors["prefix_task_cols"].rows([k]).to_torch(self.device, torch.float32)
        rows = self.bank.tensors["prefix_task_rows"].rows([k]).to_torch(self.device, torch.float32)
        return task_prompts(self._shared.unsqueeze(0), cols, rows)[0]  # PEFT's embedding(indices) is (1, N, d)

    def _prompt(self, k: int) -> torch.Tensor:
        """Task ``k``'s prompt cast to the model's dtype, computed once."""
        got = self._prompts.get(k)
        if got is None:
            got = self._prompts[k] = self._float_prompt(k).to(self.dtype)
        return got

    def token_embeddings(self, input_ids) -> torch.Tensor:
        """``embed_tokens(input_ids)`` (L, d) in the model's dtype (rows of the embedding matrix)."""
        ids = _ids(input_ids)
        out = torch.empty(len(ids), self.hidden_size, dtype=self.dtype)
        self._tokens_into(ids, out)
        return out.to(self.device)

    def _tokens_into(self, ids: torch.Tensor, out: torch.Tensor) -> None:
        if self._preload:
            self.embeddings.load()
        self.embeddings.rows_into(ids, out)

    def _request(self, k: int, ids: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Task ``k``'s prompt, then the rows of ``ids``, written into ``out`` (N + L, d) on the CPU
        (measured: a gather into place, where gathering and then concatenating copies the output twice)."""
        N = self.num_tokens
        if out is None:
            out = torch.empty(N + len(ids), self.hidden_size, dtype=self.dtype)
        out[:N] = self._prompt(k)
        self._tokens_into(ids, out[N:])
        return out

    # -- requests -----------------------------------------------------------------------------
    def __call__(self, task: int | str, input_ids) -> torch.Tensor:
        """(N + L, d): task ``task``'s prompt (float32, cast to the model's dtype), then the
        embeddings of ``input_ids`` (L token ids: a list or a 1-D tensor)."""
        return self._request(self.task_index(task), _ids(input_ids)).to(self.device)

    def batch(self, tasks: Sequence[int | str], input_ids):
        """Many requests at once. ``input_ids`` a 2-D tensor (B, L) gives a (B, N + L, d) tensor,
        PEFT's ``inputs_embeds`` for that batch with ``task_ids=tasks``; a list of B id sequences
        gives a list of B (N + L_b, d) tensors. Each task's prompt is computed once."""
        if isinstance(input_ids, torch.Tensor) and input_ids.dim() == 2:
            seqs, stacked = list(input_ids.to(torch.long)), True
        else:
            seqs, stacked = [_ids(x) for x in input_ids], False
        if len(tasks) != len(seqs):
            raise UsageError(f"batch: {len(tasks)} tasks for {len(seqs)} requests; give one task per request")
        ks = [self.task_index(t) for t in tasks]
        if not stacked:
            return [self._request(k, s).to(self.device) for k, s in zip(ks, seqs)]
        B, L = input_ids.shape
        out = torch.empty(B, self.num_tokens + L, self.hidden_size, dtype=self.dtype)
        for b, (k, s) in enumerate(zip(ks, seqs)):
            self._request(k, s, out[b])
        return out.to(self.device)

    def vllm_prompt(self, task: int | str, input_ids) -> dict:
        """The prompt for vLLM's offline ``LLM.generate``: ``{"prompt_embeds": (N + L, d) tensor}``
        (the engine needs ``enable_prompt_embeds=True``)."""
        return {"prompt_embeds": self(task, input_ids).cpu()}

    def vllm_request(self, task: int | str, input_ids, **params) -> dict:
        """The JSON body of a request to vLLM's Completions API (``POST /v1/completions``, server
        flag ``--enable-prompt-embeds``): ``prompt_embeds`` is the (N + L, d) tensor, saved with
        ``torch.save`` and base64-encoded, as the server reads it (``torch.load(weights_only=True)``
        of the base64-decoded bytes); ``params`` (``model``, ``max_tokens``, ``temperature``, ...)
        are added as they are."""
        if "prompt_embeds" in params:
            raise UsageError("vllm_request makes prompt_embeds itself; pass the other request fields only")
        return {"prompt_embeds": encode_tensor(self(task, input_ids)), **params}


def encode_tensor(t: torch.Tensor) -> str:
    """``t`` as vLLM's Completions API reads a prompt embedding: ``torch.save`` of a dense CPU
    tensor whose storage holds nothing else (a view would carry its whole base), base64 (standard
    alphabet, padded)."""
    buf = io.BytesIO()
    torch.save(t.detach().to("cpu").contiguous().clone(), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _ids(input_ids) -> torch.Tensor:
    """Token ids as a 1-D long tensor (from a list or a 1-D integer tensor)."""
    if isinstance(input_ids, torch.Tensor):
        if input_ids.dim() != 1 or input_ids.is_floating_point():
            raise UsageError(f"input_ids: expected a 1-D tensor of token ids, found {list(input_ids.shape)}")
        return input_ids.to(device="cpu", dtype=torch.long)
    try:
        return torch.tensor([int(i) for i in input_ids], dtype=torch.long)
    except (TypeError, ValueError):
        raise UsageError("input_ids: expected a sequence of token ids (ints) or a 1-D tensor") from None


def _check(bank: PromptBank, emb: InputEmbeddings) -> None:
    """Refuse what cannot give PEFT's inputs_embeds: no tasks, seq2seq, another hidden size, a model
    whose embedding layer scales its rows."""
    if bank.shared_only:
        raise UsageError(f"{bank.where} holds only the shared prompt; prompt embeddings need task factors")
    if bank.num_submodules == 2 or emb.is_encoder_decoder:
        why = (
            f"{bank.where} is a seq2seq bank (two transformer submodules)"
            if bank.num_submodules == 2
            else f"{emb.where} is an encoder-decoder model"
        )
        raise UsageError(
            f"{why}: PEFT puts one half of its prompt before the encoder's input and the other before the "
            "decoder's, which a decoder-only prompt embedding cannot carry; serve it with a TGIS prefix store "
            "(mptkit export BANK --all --format tgis -o DIR) or PROMPT_TUNING folders (mptkit export BANK --all -o DIR)"
        )
    if bank.token_dim != emb.hidden_size:
        raise InvalidModel(
            f"{bank.where} has d={bank.token_dim} but {emb.where}'s input embedding ({emb.key}) is "
            f"{emb.hidden_size} wide: the bank was not trained on this model"
        )
    mt = emb.model_type
    cfg = emb.config or {}
    if mt in SCALED_TYPES or cfg.get("scale_embedding") is True:
        raise InvalidModel(
            f"{emb.where}: a {mt} model scales its token embeddings inside the model (by sqrt(hidden size)); "
            "PEFT puts the unscaled prompt beside the scaled rows, which engines fed prompt embeddings do not "
            "reproduce: not supported"
        )
