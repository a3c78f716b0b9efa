"""``mptkit build RECIPE.yaml``: a recipe mixing a bank on the (loopback) Hub, a local bank and two
PROMPT_TUNING adapters gives the bank the same steps give by hand with the CLI, bit for bit; only
the chosen tasks' bytes come from the Hub; ``--plan`` says what each step reads and writes
nothing; the lock pins every source, and building from it gives the same bytes or names the source
that moved; pushing carries the recipe and the lock in the card."""

from __future__ import annotations

import hashlib
import json

import torch

from mptkit._schema import check
from tests.recipes.recipeutil import D, N, R, flip_byte, tensors_of, write
from tests.support.commands import one_error

RECIPE = """\
# two tasks of the Hub bank, renamed; a local bank; two single-task prompts fitted onto the shared prompt
sources:
  - bank: hf://owner/glue@v1
    tasks: [sst2, mnli]
    rename: {mnli: mnli-m}
  - bank: qa
  - prompts: [single/boolq, single/copa]
output: built
"""
WEIGHTS = r"/resolve/.*adapter_model\\.safetensors$"


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def by_hand(cli) -> None:
    steps = [
        ("slice", "hf://owner/glue@v1", "--tasks", "sst2,mnli", "-o", "h1"),
        ("rename", "h1", "mnli=mnli-m", "-o", "h2"),
        ("decompose", "single/boolq", "single/copa", "--shared", "hf://owner/glue@v1", "--rank", R, "-o", "h3"),
        ("merge", "h2", "qa", "h3", "-o", "hand"),
    ]
    for step in steps:
        r = cli(*step)
        assert r.exit_code == 0, (step, r.output)


def test_the_recipe_gives_the_bank_the_steps_give_by_hand(world, glue_on_hub, hub, cli):
    write("recipe.yaml", RECIPE)
    r = cli("build", "recipe.yaml")
    assert r.exit_code == 0, r.output
    served = hub.bytes_sent(WEIGHTS)
    by_hand(cli)
    built, hand = tensors_of("built"), tensors_of("hand")
    assert built.keys() == hand.keys() and all(torch.equal(built[k], hand[k]) for k in built)
    assert all(
        built[k].view(torch.uint8).numpy().tobytes() == hand[k].view(torch.uint8).numpy().tobytes() for k in built
    )
    import mptkit

    assert mptkit.load("built").task_names == mptkit.load("hand").task_names == [
        "sst2", "mnli-m", "squad", "boolq2", "nq", "boolq", "copa",
    ]  # fmt: skip
    assert (world / "built/adapter_config.json").read_bytes() == (world / "hand/adapter_config.json").read_bytes()
    # from the Hub: the header probe, the shared prompt and two tasks' rows, not the other six
    two_tasks = 16 << 10, N * D * 4, 2 * (N * R + R * D) * 4
    assert served <= sum(two_tasks) + (64 << 10), served
    assert served < glue_on_hub / 2


def test_the_build_records_the_recipe_and_every_source_resolved(world, glue_on_hub, hub, cli):
    import mptkit

    write("recipe.yaml", RECIPE)
    r = cli("build", "recipe.yaml", "--lock", "--json")
    assert r.exit_code == 0, r.output
    printed = json.loads(r.stdout)
    assert check("output", printed, pointer="/$defs/build") == []
    assert printed["lock"] == "recipe.lock.yaml" and printed["pushed"] is None and printed["output"] == "built"
    entry = mptkit.load("built").provenance[-1]
    assert printed["provenance"] == entry
    assert entry["operation"] == "build"
    assert entry["arguments"]["recipe"]["sources"][0] == {
        "bank": "hf://owner/glue@v1", "tasks": ["sst2", "mnli"], "rename": {"mnli": "mnli-m"},
    }  # fmt: skip
    assert "output" not in entry["arguments"]["recipe"]
    commit = hub.repos["owner/glue"].refs["v1"]
    hubsrc = entry["sources"][0]
    assert hubsrc["hub"]["commit"] == commit and hubsrc["source"] == 0
    assert hubsrc["sha256"] == sha256(world / "glue/adapter_model.safetensors")  # the Hub's LFS sha256
    local = entry["sources"][1]
    assert local["path"] == "qa" and "hub" not in local
    assert local["sha256"] == sha256(world / "qa/adapter_model.safetensors")
    assert [s["path"] for s in entry["sources"][2:]] == ["single/boolq", "single/copa"]


def test_plan_prints_each_step_and_its_bytes_and_writes_nothing(world, glue_on_hub, cli):
    write("recipe.yaml", RECIPE)
    before = sorted(p.name for p in world.iterdir())
    r = cli("build", "recipe.yaml", "--plan", "--json")
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert sorted(p.name for p in world.iterdir()) == before
    steps = [s["step"] for s in plan["steps"]]
    assert steps[0].startswith("read hf://owner/glue@v1 (commit ") and "2 tasks of 8" in steps[0]
    assert "by range requests" in steps[0]
    assert plan["steps"][0]["reads"] == N * D * 4 + 2 * (N * R + R * D) * 4  # the shared prompt and two tasks
    assert plan["steps"][1] == {"step": "rename mnli -> mnli-m", "reads": 0}
    assert plan["steps"][3]["reads"] == 2 * N * D * 4  # the two prompts
    assert steps[-1] == "write built"
    assert plan["task_names"] == ["sst2", "mnli-m", "squad", "boolq2", "nq", "boolq", "copa"]
    assert check("output", plan, pointer="/$defs/build_plan") == []
    text = cli("build", "recipe.yaml", "--plan").output
    assert "  1. read hf://owner/glue@v1 (commit " in text and ": reads 786.6 kB" in text
    assert not (world / "built").exists()


def test_a_lock_builds_the_same_bytes_and_stops_at_a_source_that_moved(world, glue_on_hub, hub, cli):
    write("recipe.yaml", RECIPE)
    r = cli("build", "recipe.yaml", "--lock")
    assert r.exit_code == 0, r.output
    lock = (world / "recipe.lock.yaml").read_text()
    assert lock.startswith("# mptkit lock") and "commit: " + hub.repos["owner/glue"].refs["v1"] in lock
    # the branch moves on: the lock still reads the pinned commit and gives the same bytes
    hub.commit("owner/glue", {"README.md": b"moved on\n"}, "unrelated", branch="v1")
    r = cli("build", "recipe.lock.yaml", "-o", "again")
    assert r.exit_code == 0, r.output
    for f in ("adapter_model.safetensors", "adapter_config.json"):
        assert (world / "built" / f).read_bytes() == (world / "again" / f).read_bytes()
    # a local source changes: the lock names it, and nothing is written
    flip_byte(world / "qa", 0)
    r = cli("build", "recipe.lock.yaml", "-o", "third")
    assert r.exit_code == 2
    lines = lock.splitlines()
    pin_line = next(i for i in range(lines.index("- bank: qa"), len(lines)) if lines[i].strip() == "pin:") + 1
    msg = one_error(r, "qa moved", f"recipe.lock.yaml line {pin_line}, sources[1].pin")
    assert "sha256 is now" in msg
    assert not (world / "third").exists()


def test_a_lock_refuses_a_hub_file_that_changed_under_its_commit_pin(world, glue_on_hub, hub, cli):
    write("recipe.yaml", RECIPE)
    assert cli("build", "recipe.yaml", "--lock", "-o", "one.safetensors").exit_code == 0
    text = (world / "recipe.lock.yaml").read_text()
    sha = [line.split(": ")[1] for line in text.splitlines() if "sha256:" in line][0]
    write("edited.lock.yaml", text.replace(sha, "f" * 64))
    r = cli("build", "edited.lock.yaml", "-o", "two.safetensors")
    assert r.exit_code == 2
    one_error(r, "hf://owner/glue@v1 moved", "sources[0].pin")
    assert not (world / "two.safetensors").exists()


def test_pushing_carries_the_recipe_and_the_lock_in_the_card(world, glue_on_hub, hub, cli):
    write("recipe.yaml", RECIPE.replace("output: built", "output: hf://owner/built"))
    r = cli("build", "recipe.yaml")
    assert r.exit_code == 0, r.output
    files = hub.files("owner/built")
    card = files["README.md"].decode()
    assert "## Recipe" in card and "- bank: hf://owner/glue@v1" in card and "    mnli: mnli-m" in card
    assert "commit: " + hub.repos["owner/glue"].refs["v1"] in card  # the lock
    assert "mptkit verify hf://owner/built" in card
    import mptkit

    assert mptkit.load("hf://owner/built").task_names[:2] == ["sst2", "mnli-m"]


def test_a_pushed_bank_verifies_on_the_hub_at_its_sources_commit(world, glue_on_hub, hub, cli):
    write("recipe.yaml", RECIPE.replace("output: built", "output: hf://owner/built"))
    assert cli("build", "recipe.yaml").exit_code == 0
    # the source's branch moves on: verify reads the commit the build recorded, not the branch
    hub.commit("owner/glue", {"adapter_model.safetensors": b"not a bank"}, "moved", branch="v1")
    r = cli("verify", "hf://owner/built")  # what the card tells its readers to run
    assert r.exit_code == 0, r.output
    assert "verified hf://owner/built: identical to what its build step gives from its 4 sources" in r.stdout
