"""``explain``."""

from __future__ import annotations

import click

from ._app import echo_lines, emit_json, main
from ._opts import adapter_option, json_option, quiet_option


@main.command()
@click.argument("bank")
@click.option("--task", help="The task (index or name) whose full prompt to explain.")
@click.option(
    "--base-model",
    "base_model",
    required=True,
    metavar="MODEL",
    help="The base model: a folder (config.json, model.safetensors or a sharded index, tokenizer.json), a "
    "model.safetensors, an index, or hf://owner/model[@rev]. Only its input embedding and tokenizer.json are read.",
)
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True, help="Tokens per position.")
@click.option("--shared", is_flag=True, help="Also (or, without --task, only) explain the shared prompt.")
@click.option(
    "--embedding-key", metavar="NAME", help="The input-embedding tensor's name, where the usual names do not find it."
)
@adapter_option
@quiet_option
@json_option
def explain(bank, task, base_model, top, shared, embedding_key, adapter, as_json):
    """What a prompt means: for each virtual token, the vocabulary tokens nearest by cosine similarity.

    Each virtual token of the task's full prompt (computed as PEFT computes it) is compared with every
    row of the base model's input-embedding matrix, read a block at a time (hf:// models by range
    requests), and the nearest are decoded with the model's tokenizer.json.

    \b
      mptkit explain bank/ --task sst2 --base-model path/to/model
      mptkit explain bank/ --task 0 --shared --base-model hf://owner/model --top 3 --json
    """
    from .._explain import explain as run
    from .._io import load, load_embeddings
    from .._render import explain_text

    b = load(bank, adapter=adapter)
    report = run(b, load_embeddings(base_model, embedding_key=embedding_key), task=task, shared=shared, top=top)
    if as_json:
        emit_json(report)
        return
    echo_lines(explain_text(report))
