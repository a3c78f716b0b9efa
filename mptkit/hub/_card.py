"""The model card (README.md) mptkit writes for a bank repo."""

from __future__ import annotations

from .._bank import PromptBank
from .._version import __version__

CARD_NAME = "README.md"


# -- model card ----------------------------------------------------------------------------------
_AUTO_CLASS = {
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
}


def _cell(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


# Every value put into code is quoted for the language of its block, so that no value (a base model
# id, a revision, a tensor name: all come from the bank or the user) can end a string, a line or the
# block itself and become code that a reader of the card copies and runs.
def _py(value: str) -> str:
    """``value`` as a Python string literal: only printable ASCII appears as itself; quotes,
    backslashes, backticks (which would end the Markdown block) and everything else are escapes."""
    out = []
    for c in str(value):
        n = ord(c)
        if c in '"\\`' or not (32 <= n < 127):
            out.append(f"\\x{n:02x}" if n < 256 else f"\\u{n:04x}" if n < 65536 else f"\\U{n:08x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _code(value) -> str:
    """``value`` as Markdown inline code on one line, fenced by more backticks than it holds."""
    import re

    text = " ".join(str(value).split()) or " "
    fence = "`" * (max((len(r) for r in re.findall("`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


#: what the card says under each picture it may show (paths as :mod:`mptkit._pictures` names them)
PICTURES = {
    "images/similarity.png": (
        "task similarity",
        "Cosine similarity of the tasks' full prompts, tasks in clustered order (blue -1, red +1).",
    ),
    "images/rank-use.png": (
        "rank use",
        "How much of its rank each task uses: the effective rank of `prefix_task_cols[k] @ prefix_task_rows[k]`.",
    ),
}


def model_card(bank: PromptBank, repo_id: str, revision: str | None = None, images=()) -> str:
    """README.md for a bank repo: YAML front matter as PEFT writes it (``library_name: peft``,
    ``base_model``, tags) and a body with the tasks, shapes, parameter counts, provenance and usage;
    ``images``, paths in the repo (uploaded in the same commit), are shown by relative links.
    The text depends on the bank only, so pushing the same bank twice changes nothing."""
    from ._refs import endpoint

    endpoint()  # a malformed HF_ENDPOINT: said before the client fails to import over it
    from huggingface_hub import ModelCard, ModelCardData

    from .._info import summary

    s = summary(bank)
    cfg = bank.config or {}
    base = cfg.get("base_model_name_or_path") or None
    task_type = cfg.get("task_type")
    tags = {"multitask-prompt-tuning", "mptkit", "transformers"}
    if base:
        tags.add(f"base_model:adapter:{base}")
    data = ModelCardData(
        library_name="peft",
        base_model=base,
        tags=sorted(tags),
        pipeline_tag="text-generation" if task_type == "CAUSAL_LM" else None,
    )
    T, N, d, r = s["num_tasks"], s["N"], s["d"], s["rank"]
    p = s["parameters"]
    names = bank.names()
    import shlex

    from ._refs import HubRef

    rev_arg = f", revision={_py(revision)}" if revision and revision != "main" else ""
    # the reference as mptkit reads it, its revision URL-quoted (so all ASCII), then shell-quoted
    ref = str(HubRef(repo_id, revision if revision and revision != "main" else None))
    hf_ref, plain_ref = shlex.quote(ref), shlex.quote(ref.removeprefix("hf://"))
    lines = [
        f"# {repo_id}",
        "",
        f"A multitask prompt tuning (MPT) prompt bank with {T} task(s) for PEFT's `MULTITASK_PROMPT_TUNING`: one "
        "shared soft prompt and a rank-r factor pair per task; task k's prompt is "
        "`prompt_embeddings * (prefix_task_cols[k] @ prefix_task_rows[k])`.",
        "",
        f"- Base model: {_code(base) if base else 'not recorded'}",
        f"- Task type: {task_type or 'not recorded'}",
        f"- Uploaded with mptkit {__version__}",
        "",
    ]
    shown_images = [p for p in images if p in PICTURES]
    if shown_images:
        lines += ["## Pictures", ""]
        for path in shown_images:
            alt, caption = PICTURES[path]
            lines += [f"![{alt}]({path})", "", caption, ""]
    lines += [
        "## Tasks",
        "",
        "| task_ids | name |",
        "| ---: | --- |",
    ]
    shown = 200
    lines += [f"| {i} | {_cell(n) if bank.task_names else '(unnamed)'} |" for i, n in enumerate(names[:shown])]
    if shown < T:
        lines.append(f"| ... | {T - shown} more (see {_code(f'mptkit inspect hf://{repo_id}')}) |")
    v, sub = s["num_virtual_tokens"], s["num_transformer_submodules"]
    lines += [
        "",
        "## Shapes",
        "",
        "| tensor | shape | dtype |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {_cell(_code(k))} | {list(t['shape'])} | {_cell(t['dtype'])} |" for k, t in s["tensors"].items()]
    lines += [
        "",
        f"N = {N} prompt rows"
        + (f" ({v} virtual tokens x {sub} transformer submodule(s))" if v and sub else "")
        + f", hidden size d = {d}, T = {T} tasks, rank r = {r}.",
        "",
        "## Parameters",
        "",
        f"- shared prompt: N x d = {p['shared']:,}",
        f"- per task: N x r + r x d = {p['per_task']:,}",
        f"- total: {p['total']:,}"
        + (f" ({T} separate full prompts would hold {p['as_separate_prompts']:,})" if T else ""),
        "",
        "## Provenance",
        "",
    ]
    if bank.provenance:
        for i, e in enumerate(bank.provenance, 1):
            args = ", ".join(f"{k}={val}" for k, val in (e.get("arguments") or {}).items())
            srcs = ", ".join(
                f"{x.get('name', '?')} (sha256 {str(x.get('sha256', ''))[:12]})" for x in e.get("sources") or []
            )
            ver = f" [mptkit {e['mptkit_version']}]" if e.get("mptkit_version") else ""
            lines.append(
                f"{i}. {_code(e.get('operation', '?'))}"
                + (f" {_cell(args)}" if args else "")
                + (f" from {_cell(srcs)}" if srcs else "")
                + ver
            )
    else:
        lines.append("No provenance recorded (the bank was trained or saved outside mptkit).")
    lines += _recipe(bank, f"hf://{repo_id}" + (f"@{revision}" if revision and revision != "main" else ""))
    auto = _AUTO_CLASS.get(task_type, "AutoModel")
    lines += [
        "",
        "## Usage",
        "",
        "With PEFT (every example needs its task's index, `task_ids`, from the table above):",
        "",
        "```python",
        "import torch",
        f"from transformers import {auto}",
        "from peft import PeftModel",
        "",
        f"base = {auto}.from_pretrained({_py(base or '<the base model>')})",
        f"model = PeftModel.from_pretrained(base, {_py(repo_id)}{rev_arg})",
        "outputs = model(**inputs, task_ids=torch.tensor([0]))  # one task index per example",
        "```",
        "",
        "With [mptkit](https://pypi.org/project/mptkit/):",
        "",
        "```bash",
        f"mptkit inspect {hf_ref}",
        f"mptkit pull {plain_ref} -o bank/",
        f"mptkit derive {hf_ref} --mode exact --task 0 -o task0-init.safetensors",
        "```",
        "",
        "```python",
        "import mptkit",
        f"bank = mptkit.load({_py(ref)})",
        "```",
        "",
    ]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
    return str(card)


def _recipe(bank: PromptBank, ref: str) -> list[str]:
    """A built bank's recipe and its lock (as ``mptkit build`` recorded them), as mergekit's cards
    carry their merge's recipe; nothing for a bank that was not built from a recipe."""
    from .._recipefile import dump_yaml, pinned, pins_of

    entry = bank.provenance[-1] if bank.provenance else {}
    recipe = (entry.get("arguments") or {}).get("recipe") if entry.get("operation") == "build" else None
    if not isinstance(recipe, dict) or not isinstance(recipe.get("sources"), list):
        return []
    out = ["", "## Recipe", "", "Built with `mptkit build` from this recipe (the tasks follow its sources' order):", ""]
    out += _fenced(dump_yaml(recipe))
    try:
        lock = pinned(recipe, pins_of(recipe, entry.get("sources") or []))
    except (ValueError, KeyError, TypeError, AttributeError):
        return out
    out += [
        "",
        "The lock: every source as it was resolved (the Hub commit and the file's sha256, a local file's sha256). "
        "`mptkit build` of it gives these same bytes, or names the source that moved; "
        f"`mptkit verify {ref}` rebuilds the bank and compares:",
        "",
    ]
    return out + _fenced(dump_yaml(lock))


def _fenced(text: str) -> list[str]:
    """A yaml code block whose fence is longer than any run of backticks in ``text``."""
    import re

    fence = "`" * max(3, 1 + max((len(m) for m in re.findall(r"`+", text)), default=0))
    return [f"{fence}yaml", *text.rstrip("\n").split("\n"), fence]
