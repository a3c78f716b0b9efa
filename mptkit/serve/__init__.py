"""Serving prompts at run time: :class:`TaskPrompts` (a ``torch.nn.Module`` that holds a bank and
returns each request's task prompt, PEFT's ``MultitaskPromptEmbedding`` call), :func:`prepend`, and
:class:`PromptEmbedder` (a request's whole ``inputs_embeds`` from a bank and a base model's
input-embedding matrix, for vLLM's prompt embeddings and any engine that takes ``inputs_embeds``).
Importing this package imports torch."""

from ._embedder import PromptEmbedder
from ._runtime import TaskPrompts, prepend

__all__ = ["TaskPrompts", "prepend", "PromptEmbedder"]
