#!/usr/bin/env python3
"""CI's second stage: mptkit as a new user installs it, with nothing from the test extra.

In a copy of the repository, run the README's first set-up command exactly as written (a fresh
``.venv``, ``pip install torch==2.13.0``, a non-editable ``pip install .``, then inspect, derive and
validate the example bank). Then, from a folder outside the copy (so that only the installed
package can be imported), run every command that computes on ``examples/bank``, in every mode and
with ``--dtype`` casts, plus the Python serving API. Any non-zero exit, any "internal error" or
traceback, and any output on stderr other than mptkit's named warnings (a warning such as torch's
"Failed to initialize NumPy") fails the stage: a runtime import that is not a declared dependency
cannot hide here.

    python3 .ci/bare_install.py                     # what .ci/run does
    python3 .ci/bare_install.py --uninstall numpy   # the proof that it fails without numpy
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_setup_command() -> str:
    """The first ```sh block after the README's "Set up on a fresh machine" heading."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Set up on a fresh machine", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S).group(1).strip()
    assert "\n" not in block and "pip install torch" in block and "-e ." not in block, block
    return block


def copy_repo(dest: Path) -> None:
    """The files git would commit (tracked, and untracked but not ignored): what a clone has."""
    files = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True, capture_output=True
        )
        .stdout.decode()
        .split("\0")
    )
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)


#: pip's own notices (e.g. "WARNING: Location ... is ignored") are not mptkit's
PIP_LINE = re.compile(r"^(WARNING|DEPRECATION|\[notice\]): ")

#: mptkit's own warnings that a command on an MPT adapter folder must give, each by its opening words
#: (never wholesale): ``validate`` of a PEFT MPT folder says that engines reading its prompt_embeddings
#: would serve the shared prompt (docs/serving.md). Any other line on stderr still fails the stage.
NAMED_WARNINGS = (re.compile(r"^mptkit: warning: engines that load a PEFT folder's prompt_embeddings "),)


def unnamed(lines: list[str]) -> list[str]:
    """The lines of stderr that are neither pip's notices nor one of mptkit's named warnings."""
    return [
        ln for ln in lines if ln.strip() and not PIP_LINE.match(ln) and not any(w.match(ln) for w in NAMED_WARNINGS)
    ]


def commands(bank: str, work: Path) -> list[tuple[list[str], int, str]]:
    """(argv, expected exit code, text that must appear on stdout or stderr)."""
    o = lambda name: str(work / name)
    c = []

    def ok(*argv, expect=""):
        c.append((list(argv), 0, expect))

    ok("inspect", bank, expect="tasks T          4")
    ok("inspect", bank, "--values", expect="per task")
    ok("inspect", bank, "--json", expect='"num_tasks": 4')
    ok("validate", bank, expect="valid (bank)")
    ok("validate", bank, "--values", "--json", expect='"valid": true')
    ok("derive", bank, "--mode", "exact", "--task", "1", "-o", o("exact.safetensors"), expect="task 1")
    ok("derive", bank, "--mode", "exact", "--task", "2", "-o", o("exact-folder"))
    ok("derive", bank, "--mode", "average", "-o", o("average.safetensors"), expect="mean of the factors of 4 tasks")
    ok("derive", bank, "--mode", "average", "-o", o("average-folder"))
    ok("derive", bank, "--mode", "shared", "-o", o("shared.safetensors"))
    ok("derive", bank, "--mode", "shared", "--num-tasks", "2", "--seed", "0", "-o", o("fresh"))
    for i, dtype in enumerate(("bfloat16", "float16", "float64", "float32")):
        ok("derive", bank, "--mode", "exact", "--task", "0", "--dtype", dtype, "-o", o(f"exact-{dtype}.safetensors"))
        ok(
            "derive",
            bank,
            "--mode",
            ("average", "shared")[i % 2],
            "--dtype",
            dtype,
            "-o",
            o(f"mode-{dtype}.safetensors"),
        )
    ok("export", bank, "--task", "1", "-o", o("export"), expect="PROMPT_TUNING")
    ok("export", bank, "--task", "2", "--dtype", "bfloat16", "-o", o("export-bf16"))
    ok("rename", bank, "0=first", "-o", o("renamed"))
    ok("rename", bank, "--names", "a,b,c,d", "-o", o("named"))
    ok("slice", o("named"), "--tasks", "d,0", "-o", o("sliced.safetensors"))
    ok("remove", o("named"), "--tasks", "b", "-o", o("removed"))
    ok("merge", bank, bank, "--rename-duplicates", "-o", o("merged"))
    ok("merge", bank, o("named"), "--rename-duplicates", "--dtype", "bfloat16", "-o", o("merged-bf16"))
    ok("convert", bank, "--dtype", "bfloat16", "-o", o("rounded.safetensors"))
    ok("convert", o("rounded.safetensors"), "--dtype", "float32", "-o", o("rounded32.safetensors"))
    ok(
        "merge",
        bank,
        o("rounded32.safetensors"),
        "--rename-duplicates",
        "--refit",
        "--max-error",
        "0.5",
        "-o",
        o("refit"),
        expect="relative error",
    )
    ok("add", bank, "--name", "avg", "--init", "average", "-o", o("add-average"))
    ok("add", bank, "--name", "copy", "--init", "exact:1", "-o", o("add-exact"))
    ok("add", bank, "--name", "rnd", "--init", "random", "--seed", "3", "-o", o("add-random"))
    ok("add", bank, "--name", "from", "--from", f"{o('named')}:c", "-o", o("add-from"))
    ok("rank", bank, "--rank", "3", "-o", o("rank3"))
    ok("rank", bank, "--rank", "1", "-o", o("rank1"), expect="relative error")
    ok("rank", bank, "--rank", "auto", "--max-error", "0.3", "-o", o("rank-auto"), expect="relative error")
    ok(
        "merge",
        bank,
        o("rounded32.safetensors"),
        "--rename-duplicates",
        "--refit",
        "--rank",
        "auto",
        "--max-error",
        "0.01",
        "-o",
        o("refit-auto"),
        expect="relative error",
    )
    ok("similarity", bank, expect="nearest")
    ok("similarity", bank, "--top", "2", expect="nearest")
    ok("report", bank, "-o", o("report.html"), expect="a report of 4 task(s)")
    ok("export", bank, "--all", "-o", o("table.npy"), expect="prompt table (4, 6, 32) F32, encoder half")
    ok("export", bank, "--tasks", "0,2", "--dtype", "float16", "-o", o("table16.safetensors"), expect="prompt table")
    ok("export", bank, "--all", "-o", o("prompts"), expect="4 PROMPT_TUNING adapters")
    ok("decompose", o("prompts"), "--rank", "2", "-o", o("decomposed"), expect="relative error")
    ok("decompose", o("table.npy"), "--rank", "auto", "--max-error", "0.5", "-o", o("decomposed-auto.safetensors"))
    ok(
        "decompose",
        o("prompts") + "/task3",
        "--shared",
        bank,
        "--rank",
        "2",
        "--dtype",
        "bfloat16",
        "-o",
        o("decomposed-shared.safetensors"),
    )
    ok("similarity", bank, "--tasks", "0-2", "--json")
    ok("convert", bank, "-o", o("converted"), expect="PEFT adapter folder")
    ok("convert", o("exact.safetensors"), "-o", o("converted.safetensors"))
    # recipes (PyYAML is a declared dependency): the docs' example recipe, its sources made here
    ok("rename", bank, "--names", "sst2,mnli,qqp,rte", "-o", o("glue"))
    ok("export", bank, "--task", "3", "-o", o("boolq"))
    recipe = str(Path(bank).parent / "recipe.yaml")
    ok("build", recipe, "--plan", "-o", o("planned"), expect="in all: reads")  # the recipe's merged/ is taken here
    ok("build", recipe, "-o", o("built"), expect="built ")
    ok("verify", o("built"), expect="identical to what its build step gives")
    ok("verify", o("merged"), expect="identical to what its merge step gives")
    ok("verify", o("decomposed"), expect="identical to what its decompose step gives")
    c.append((["diff", bank, o("rank3")], 1, "same prompt"))
    ok(
        "validate",
        *(
            o(n)
            for n in (
                "exact-folder",
                "average-folder",
                "fresh",
                "renamed",
                "removed",
                "merged",
                "refit",
                "add-average",
                "add-random",
                "rank3",
                "rank1",
                "converted",
                "rank-auto",
                "refit-auto",
                "decomposed",
                "decomposed-auto.safetensors",
            )
        ),
    )
    # serving and explaining: TGIS prefixes (torch.save), the nearest tokens of a tiny base model that
    # TINY_MODEL writes with the runtime dependencies only (numpy, tokenizers)
    ok("export", bank, "--all", "--format", "tgis", "-o", o("tgis"), expect="TGIS")
    ok("export", bank, "--tasks", "1", "--format", "tgis", "--dtype", "bfloat16", "-o", o("tgis-bf16"))
    ok("explain", bank, "--task", "0", "--base-model", o("tiny-t5"), "--top", "3", expect="task 0")
    ok("explain", bank, "--shared", "--base-model", o("tiny-t5"), "--json", expect='"nearest"')
    # the plot extra is not installed: one sentence, exit 2
    c.append((["similarity", bank, "--plot", o("heat.png")], 2, "pip install 'mptkit[plot]'"))
    return c


TINY_MODEL = """
import json, os, struct, numpy as np
from tokenizers import Tokenizer, models, pre_tokenizers
os.makedirs("tiny-t5", exist_ok=True)
json.dump({{"model_type": "t5", "d_model": 32, "vocab_size": 100, "is_encoder_decoder": True}},
          open("tiny-t5/config.json", "w"))
rng = np.random.default_rng(0)
w = rng.standard_normal((100, 32)).astype("<f4")  # written as safetensors lays it out (no safetensors here)
head = json.dumps({{"shared.weight": {{"dtype": "F32", "shape": [100, 32], "data_offsets": [0, w.nbytes]}}}})
head = head.encode().ljust(-(-len(head) // 8) * 8)
open("tiny-t5/model.safetensors", "wb").write(struct.pack("<Q", len(head)) + head + w.tobytes())
tok = Tokenizer(models.WordLevel({{f"w{{i}}": i for i in range(100)}}, unk_token="w0"))
tok.pre_tokenizer = pre_tokenizers.Whitespace()
tok.save("tiny-t5/tokenizer.json")
print("tiny model ok")
"""

SERVING = """
import torch, mptkit
from mptkit.serve._runtime import TaskPrompts
p = TaskPrompts.from_bank({bank!r})
out = p(torch.tensor([0, 2, 2, 1]))
assert out.shape == (4, 12, 32), out.shape
bank = mptkit.load({bank!r})
assert torch.equal(p.to_bank().tensors["prefix_task_cols"].to_torch(), bank.tensors["prefix_task_cols"].to_torch())
print("serving ok")
"""


def run(argv, *, cwd, env, expect_rc=0, expect="", label=None) -> list[str]:
    """Run one command; the list of what went wrong (empty when it passed)."""
    t = time.monotonic()
    r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    shown = label or " ".join(argv)
    print(f"  {time.monotonic() - t:5.1f} s  rc={r.returncode}  {shown}", flush=True)
    bad = []
    if r.returncode != expect_rc:
        bad.append(f"exit {r.returncode}, expected {expect_rc}")
    for word in ("internal error", "Traceback"):
        if word in r.stdout + r.stderr:
            bad.append(f"{word!r} in the output")
    stderr = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if expect_rc in (0, 1) and unnamed(stderr):  # 1: diff's and verify's "different", said on stdout
        bad.append("output on stderr (a warning?)")
    if expect_rc not in (0, 1) and len(stderr) != 1:
        bad.append(f"expected one error sentence on stderr, found {len(stderr)} lines")
    if expect and expect not in r.stdout + r.stderr:
        bad.append(f"{expect!r} not in the output")
    if bad:
        return [f"{shown}: {'; '.join(bad)}\n--- stdout ---\n{r.stdout[-3000:]}\n--- stderr ---\n{r.stderr[-3000:]}"]
    return []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--uninstall",
        action="append",
        default=[],
        metavar="PKG",
        help="uninstall PKG after the set-up (to prove the stage fails without it)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mptkit-bare-"))
    failures: list[str] = []
    try:
        repo, work = tmp / "repo", tmp / "work"
        repo.mkdir()
        work.mkdir()
        copy_repo(repo)
        setup = readme_setup_command()
        env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if "/.venv/" not in p)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        env["MPTKIT_CACHE"] = str(tmp / "cache")
        print(f"README set-up command, in a copy of the repository ({repo}):\n  {setup}", flush=True)
        t = time.monotonic()
        r = subprocess.run(
            ["bash", "-c", setup],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=1800,
        )
        print(f"  {time.monotonic() - t:5.1f} s  rc={r.returncode}", flush=True)
        ours = unnamed(r.stderr.splitlines())
        if r.returncode != 0 or ours or "internal error" in r.stdout or "wrote target:" not in r.stdout:
            print(r.stdout[-4000:], "\n--- stderr ---\n", r.stderr[-4000:])
            print("FAILED: the README's set-up command")
            return 1
        venv_bin = repo / ".venv" / "bin"
        pip_show = subprocess.run(
            [str(venv_bin / "python"), "-m", "pip", "list", "--format=freeze"], env=env, capture_output=True, text=True
        ).stdout
        for forbidden in ("pytest", "peft", "transformers", "hypothesis"):
            if re.search(rf"^{forbidden}==", pip_show, flags=re.M | re.I):
                failures.append(f"{forbidden} is installed: the bare install must not have the test extra")
        direct = subprocess.run(
            [str(venv_bin / "python"), "-c", "import mptkit, os; print(mptkit.__file__)"],
            env=env,
            cwd=work,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not direct.startswith(str(repo / ".venv")):
            failures.append(f"mptkit is imported from {direct}, not from the non-editable install")
        for pkg in args.uninstall:
            subprocess.run([str(venv_bin / "python"), "-m", "pip", "uninstall", "-y", "-q", pkg], env=env, check=True)
            print(f"uninstalled {pkg} (this run must fail)")
        env["PATH"] = f"{venv_bin}{os.pathsep}{env['PATH']}"
        env["VIRTUAL_ENV"] = str(repo / ".venv")
        bank = str(repo / "examples" / "bank")
        failures += run(
            [str(venv_bin / "python"), "-c", TINY_MODEL.format()],
            cwd=work,
            env=env,
            expect="tiny model ok",
            label="python: a tiny base model for explain (numpy, tokenizers)",
        )
        print(f"every command that computes, from {work}:", flush=True)
        for argv, rc, expect in commands(bank, work):
            failures += run(
                ["mptkit", *argv],
                cwd=work,
                env=env,
                expect_rc=rc,
                expect=expect,
                label="mptkit " + " ".join(a.replace(str(work) + "/", "").replace(bank, "examples/bank") for a in argv),
            )
        failures += run(
            [str(venv_bin / "python"), "-c", SERVING.format(bank=bank)],
            cwd=work,
            env=env,
            expect="serving ok",
            label="python: TaskPrompts.from_bank(examples/bank)",
        )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if failures:
        print(f"\nFAILED: {len(failures)} problem(s) in the bare install")
        for f in failures:
            print("\n" + f)
        return 1
    print("\nthe bare install runs every command: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
