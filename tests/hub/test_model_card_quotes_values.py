"""The model card's code quotes every value it holds: a base model id, a revision or a
name from the bank can hold quotes, backslashes, line breaks, backticks that would end the
Markdown block, or non-ASCII line separators; none may become a line of code that a reader of the
published card copies and runs. Each block is parsed as its language would parse it, and each
value must come back exactly as it was."""

from __future__ import annotations

import ast
import shlex

import pytest

import mptkit
from mptkit.hub import model_card, parse_ref

HOSTILE = [
    't5")\nimport os; os.system("echo pwned")\n#',
    "t5'''\nimport os\n'''",
    't5\\"); import os #',
    "```\n```python\nimport os\n```",
    "t5\u2028import os\u2029#",
    "t5 `$(touch pwned)` ;rm -rf ~",
]
REVISIONS = [None, "v1", 'v1"); import os; ("', "a`b`c\n```", "refs/pr/3", "x;touch pwned\n"]


def _blocks(card: str) -> list[tuple[str, str]]:
    """(language, text) of each fenced block, as a Markdown reader splits them."""
    out, lang, body = [], None, []
    for line in card.split("\n"):
        if line.startswith("```"):
            if lang is None:
                lang, body = line[3:].strip(), []
            else:
                out.append((lang, "\n".join(body)))
                lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, "a block was left open"
    return out


def _literal(node) -> str:
    assert isinstance(node, ast.Constant) and isinstance(node.value, str), ast.dump(node)
    return node.value


@pytest.mark.parametrize("base", HOSTILE)
@pytest.mark.parametrize("revision", REVISIONS)
def test_values_in_the_cards_code_stay_values(example_bank, base, revision):
    bank = mptkit.load(example_bank).with_config({"base_model_name_or_path": base})
    blocks = _blocks(model_card(bank, "owner/bank", revision))
    assert [lang for lang, _ in blocks] == ["python", "bash", "python"]
    peft_code, shell, api = (text for _, text in blocks)

    tree = ast.parse(peft_code)  # a value that ended its string would not parse, or add statements
    kinds = [type(s).__name__ for s in tree.body]
    assert kinds == ["Import", "ImportFrom", "ImportFrom", "Assign", "Assign", "Assign"], kinds
    load_base, load_adapter = tree.body[3].value, tree.body[4].value
    assert _literal(load_base.args[0]) == base
    assert _literal(load_adapter.args[1]) == "owner/bank"
    given = {k.arg: _literal(k.value) for k in load_adapter.keywords}
    assert given == ({"revision": revision} if revision not in (None, "main") else {})

    lines = shell.split("\n")
    assert len(lines) == 3
    for line in lines:
        argv = shlex.split(line)
        assert argv[:2] in (["mptkit", "inspect"], ["mptkit", "pull"], ["mptkit", "derive"]), argv
        ref = parse_ref(argv[2])
        assert (ref.repo_id, ref.revision) == ("owner/bank", revision if revision != "main" else None)

    tree = ast.parse(api)
    assert [type(s).__name__ for s in tree.body] == ["Import", "Assign"]
    assert parse_ref(_literal(tree.body[1].value.args[0])).revision == (revision if revision != "main" else None)


def test_a_pushed_card_holds_no_injected_code(hub, cli, example_bank, tmp_path):
    import json
    import shutil

    folder = tmp_path / "bank"
    shutil.copytree(example_bank, folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = HOSTILE[0]
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    r = cli("push", folder, "owner/bank")
    assert r.exit_code == 0, r.output
    card = hub.files("owner/bank")["README.md"].decode()
    code = _blocks(card)[0][1]
    assert "import os" not in [s.strip() for s in code.split("\n")]
    assert _literal(ast.parse(code).body[3].value.args[0]) == HOSTILE[0]
