"""Serving prompts at run time: :class:`TaskPrompts` (a ``torch.nn.Module`` that holds a bank and
returns each request's task prompt, PEFT's ``MultitaskPromptEmbedding`` call) and :func:`prepend`.
Importing this package imports torch."""

from ._runtime import TaskPrompts, prepend

__all__ = ["TaskPrompts", "prepend"]
