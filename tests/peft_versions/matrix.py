"""The PEFT-versions matrix: every adapter folder mptkit writes loads in the PEFT it is meant for and
gives that PEFT's MPT logits with task_ids, bit for bit.

    python tests/peft_versions/matrix.py                       # 0.6.2 0.10.0 0.13.2 0.14.0 0.17.1 newest
    python tests/peft_versions/matrix.py --versions 0.6.2,0.10.0 --venvs /tmp/v   # what .ci/run does

Run it with mptkit installed (the project's venv): mptkit runs here, in this process; each older
PEFT runs in a venv of its own (made on first use under ``--venvs``, default
``~/.cache/mptkit/peft-venvs``: ``pip install torch==2.13.0`` first, then a transformers of the
PEFT's time and that PEFT, pip's cache making a second build fast) that needs only torch,
transformers and PEFT: ``oldpeft.py`` there saves banks and checks outputs, and the two sides meet in
files under ``--work``. "newest" is the PEFT installed here.

For each version and each of a causal and a seq2seq tiny model:

* **from that PEFT** (``bank``): PEFT saves a bank; mptkit reads it (``inspect``: the shapes, and that
  the table says this PEFT loads it; a bare copy holds exactly the tensors PEFT loads) and writes,
  with no option, derive exact/average/shared, export --task, export --all to a folder, slice,
  merge, rename, remove, add, convert, decompose (of that folder of adapters); every folder keeps
  the bank's config fields and loads in that PEFT with the source tasks' logits; the derived
  .safetensors files work as its prompt_tuning_init_state_dict_path (0.9.0 and later; before, its own
  AttributeError, as ``inspect`` says).
* **for that PEFT** (``current``): the newest PEFT saves a bank; mptkit writes the same outputs with
  ``--peft-version X``; they load in X with the source tasks' logits; and the bank itself loads,
  warns or is refused in X exactly as the table (``inspect``'s "loads in") says.

Prints one line per version and model kind, then every failure; exits 1 on any.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
OLD = HERE / "oldpeft.py"
KINDS = ("causal", "seq2seq")
#: PEFT release -> (a transformers of its time, what else it needs, pinned to its time)
STACKS = {
    "0.6.2": ("4.35.2", ["accelerate==0.24.1", "numpy<2"]),
    "0.10.0": ("4.39.3", ["accelerate==0.28.0", "numpy<2"]),
    "0.13.2": ("4.45.2", ["accelerate==1.0.1", "numpy<2"]),
    "0.14.0": ("4.47.1", ["accelerate==1.2.1", "numpy<2"]),
    "0.17.1": ("4.55.4", ["accelerate==1.10.1"]),
}
DEFAULT = ",".join([*STACKS, "newest"])
QUIET_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning",
    "TOKENIZERS_PARALLELISM": "false",
}


def run(argv, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, env={**os.environ, **QUIET_ENV}, **kw)
    if r.returncode not in (0, 1) or (r.returncode == 1 and "check" not in argv):
        sys.exit(f"failed: {shlex.join(map(str, argv))}\n{r.stdout[-3000:]}{r.stderr[-3000:]}")
    return r


def venv(version: str, root: Path) -> str:
    """The python of a venv holding torch 2.13.0, a transformers of PEFT ``version``'s time and that PEFT."""
    if version == "newest":
        return sys.executable
    tf, extra = STACKS[version]
    spec = ["torch==2.13.0", f"transformers=={tf}", f"peft=={version}", *extra]
    folder = root / f"peft-{version}"
    python = folder / "bin" / "python"
    stamp = folder / "mptkit-stack.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return str(python)
    shutil.rmtree(folder, ignore_errors=True)
    run([sys.executable, "-m", "venv", folder])
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run([*pip, "torch==2.13.0"])  # first: nothing after it may replace it (torch stays pinned in the next line)
    run([*pip, *spec])
    stamp.write_text(json.dumps(spec))
    return str(python)


def mptkit(*args, cwd: Path) -> str:
    """Run the mptkit command line in this process (one torch import for the whole matrix)."""
    from click.testing import CliRunner

    from mptkit.cli import main

    old = os.getcwd()
    os.chdir(cwd)
    try:
        r = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    finally:
        os.chdir(old)
    if r.exit_code != 0:
        raise AssertionError(f"mptkit {shlex.join(map(str, args))}: exit {r.exit_code}: {r.output.strip()[:400]}")
    return r.stdout


def outputs(src: str, out: str, extra: list[str]) -> list[dict]:
    """Write every adapter folder and init file mptkit makes from ``src`` (run in the kind's folder);
    return the checks oldpeft.py runs on them."""
    o = lambda name: f"{out}/{name}"
    folder = lambda *tasks, **kw: {"check": "folder", "tasks": list(tasks), **kw}
    init = lambda kind, *tasks: {"check": "init", "init": kind, "tasks": list(tasks)}
    derive = lambda *a: ["derive", src, "--mode", *a]
    steps = [
        (derive("exact", "--task", "1", "-o", o("exact")), folder(1)),
        (derive("average", "-o", o("average")), folder(0, expect="average")),
        (derive("shared", "--num-tasks", "2", "--seed", "0", "-o", o("shared")), folder(0, 1, expect="shared")),
        (["export", src, "--task", "2", "-o", o("export")], {"check": "prompt", "tasks": [2]}),
        (["export", src, "--all", "-o", o("prompts")], None),
        (["slice", src, "--tasks", "2,0", "-o", o("slice")], folder(2, 0)),
        (["slice", src, "--tasks", "0,1", "-o", o("a")], folder(0, 1)),
        (["merge", o("a"), src, "--rename-duplicates", "-o", o("merge")], folder(0, 1, 0, 1, 2)),
        (["rename", src, "--names", "x,y,z", "-o", o("rename")], folder(0, 1, 2)),
        (["remove", src, "--tasks", "1", "-o", o("remove")], folder(0, 2)),
        (["add", src, "--init", "exact:1", "-o", o("add")], folder(0, 1, 2, 1)),
        (["convert", src, "-o", o("convert")], folder(0, 1, 2)),
        (["decompose", o("prompts"), "--rank", "2", "-o", o("decompose")], folder(0, 1, 2, expect="self")),
        (derive("exact", "--task", "1", "-o", o("exact.safetensors")), init("EXACT_SOURCE_TASK", 1)),
        (derive("average", "-o", o("average.safetensors")), init("AVERAGE_SOURCE_TASKS")),
        (derive("shared", "-o", o("shared.safetensors")), init("ONLY_SOURCE_SHARED")),
    ]
    checks = []
    for argv, check in steps:
        bare = argv[-1].endswith(".safetensors")
        mptkit(*argv, *([] if bare else extra), cwd=Path.cwd())
        if check:
            checks.append({"name": f"{src}: {argv[0]} -> {argv[-1]}", "path": argv[-1], "source": src, **check})
    for k in range(3):  # export --all: one PROMPT_TUNING folder per task
        path = o(f"prompts/task{k}")
        checks.append(
            {"name": f"{src}: export --all -> {path}", "path": path, "source": src, "check": "prompt", "tasks": [k]}
        )
    return checks


def one(version: str, kind: str, root: Path, python: str) -> list[str]:
    """mptkit's side for one version and kind, in ``root``; the checks for oldpeft.py; problems found here."""
    from mptkit import _peftfields as fields

    problems = []
    os.chdir(root)
    meta = json.loads(Path("meta.json").read_text())
    info = json.loads(mptkit("inspect", "bank", "--json", cwd=root))
    S = 2 if kind == "seq2seq" else 1
    want = {"N": 5 * S, "d": 24, "num_tasks": 3, "rank": 2, "num_virtual_tokens": 5, "num_transformer_submodules": S}
    got = {k: info[k] for k in want}
    if got != want or info["task_type"] != meta["config"]["task_type"]:
        problems.append(f"inspect read {got}, expected {want}")
    target = meta["peft"]
    clean = info["peft_versions"]["clean"]
    if fields.parse(clean) > fields.parse(target):
        problems.append(f"the table says PEFT {clean} and later load this bank, but PEFT {target} saved it")
    mptkit("convert", "bank", "-o", "out/bank.safetensors", cwd=root)
    checks = [{"name": "bank: mptkit's reading", "check": "read", "path": "out/bank.safetensors", "bank": "bank"}]
    checks += outputs("bank", "out", [])
    back = {"check": "folder", "tasks": [0, 1, 2], "source": "bank", "path": "out/back"}
    checks.append({"name": "bank: convert .safetensors -> out/back --peft-version", **back})
    mptkit("convert", "out/bank.safetensors", "--peft-version", version_of(target), "-o", "out/back", cwd=root)
    # for this PEFT: a bank of the newest PEFT, written with --peft-version
    shutil.copytree(root.parent.parent / "current" / kind / "bank", "current", dirs_exist_ok=True)
    checks += outputs("current", "for", ["--peft-version", version_of(target)])
    # every folder has the fields this PEFT writes (its own bank's): from its bank by keeping them, from
    # the newest PEFT's bank by --peft-version (which also checks the table against what it writes)
    written = set(meta["config"])
    for c in checks:
        cfg = Path(c["path"]) / "adapter_config.json"
        if c["check"] in ("folder", "prompt") and cfg.exists():
            keys = set(json.loads(cfg.read_text()))
            want = written - (set(fields.MPT_ONLY) if c["check"] == "prompt" else set())
            if keys != want:
                problems.append(f"{cfg}: fields {sorted(keys ^ want)} differ from those PEFT {target} writes")
    table = json.loads(mptkit("inspect", "current", "--json", cwd=root))["peft_versions"]
    expect = "clean" if fields.parse(table["clean"]) <= fields.parse(target) else None
    for state in ("ignores", "refuses"):
        span = table[state]
        if expect is None and span and fields.parse(span[0]) <= fields.parse(target) <= fields.parse(span[1]):
            expect = {"ignores": "warns", "refuses": "refuses"}[state]
    checks.append({"name": f"current: as is ({expect})", "check": "loadable", "path": "current", "expect": expect})
    plan = {"sources": {"bank": "bank", "current": "current"}, "checks": checks}
    Path("plan.json").write_text(json.dumps(plan, indent=1))
    return problems


def version_of(installed: str) -> str:
    """The release --peft-version names for an installed PEFT (a dev build: the release before it)."""
    from mptkit import _peftfields as fields

    v = fields.parse(installed)
    return max((r for r in fields.RELEASES if fields.parse(r) <= v), key=fields.parse)


class Clock:
    """Wall and CPU seconds (this process and its children) spent in named phases."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    def __call__(self, phase: str, fn, *args):
        w0, c0 = time.monotonic(), _cpu()
        try:
            return fn(*args)
        finally:
            self.wall[phase] = self.wall.get(phase, 0.0) + time.monotonic() - w0
            self.cpu[phase] = self.cpu.get(phase, 0.0) + _cpu() - c0


def _cpu() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", default=DEFAULT, help=f"comma-separated PEFT releases (default {DEFAULT})")
    default_venvs = os.environ.get("MPTKIT_PEFT_VENVS") or Path.home() / ".cache" / "mptkit" / "peft-venvs"
    ap.add_argument("--venvs", type=Path, default=default_venvs, help="where the venvs are kept (MPTKIT_PEFT_VENVS)")
    ap.add_argument("--work", type=Path, help="where banks and outputs go (default: a temporary folder)")
    args = ap.parse_args()
    versions = args.versions.split(",")
    unknown = [v for v in versions if v != "newest" and v not in STACKS]
    if unknown:
        sys.exit(f"no stack for PEFT {', '.join(unknown)}: known {', '.join(STACKS)} and newest")
    os.environ.setdefault("MPTKIT_CACHE", tempfile.mkdtemp(prefix="mptkit-matrix-cache-"))
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    work = (args.work or Path(tempfile.mkdtemp(prefix="mptkit-peft-matrix-"))).resolve()
    args.venvs.mkdir(parents=True, exist_ok=True)
    start, cpu0 = time.monotonic(), _cpu()
    run([sys.executable, OLD, "save", work / "current", ",".join(KINDS)])  # the newest PEFT's banks
    rows, failures = [], []
    for version in versions:
        clock, root = Clock(), work / version
        python = clock("venv", venv, version, args.venvs.resolve())
        clock("peft", run, [python, OLD, "save", root, ",".join(KINDS)])
        problems = {kind: clock("mptkit", one, version, kind, root / kind, python) for kind in KINDS}
        os.chdir(work)
        checked = clock("peft", run, [python, OLD, "check", root, ",".join(KINDS)])
        cells = []
        for kind in KINDS:
            res = json.loads((root / kind / "result.json").read_text())["results"]
            bad = [f"{r['name']}: {r['note']}" for r in res if not r["ok"]] + [f"mptkit: {p}" for p in problems[kind]]
            failures += [f"PEFT {version} {kind}: {b}" for b in bad]
            cannot = sum(r["ok"] and r["note"].startswith("cannot") for r in res)
            cells.append(f"{sum(r['ok'] for r in res) - cannot}/{cannot}/{len(bad)}")
        if checked.returncode and not failures:
            failures.append(
                f"PEFT {version}: oldpeft.py check failed:\n{checked.stdout[-2000:]}{checked.stderr[-2000:]}"[:4000]
            )
        meta = json.loads((root / KINDS[0] / "meta.json").read_text())
        rows.append((meta["peft"], meta["transformers"], *cells, clock))
    head = ("peft", "transformers", "causal", "seq2seq", "venv s", "peft s", "mptkit s", "total s", "cpu s")
    line = "{:<8} {:<13} {:>9} {:>9} {:>7} {:>7} {:>8} {:>8} {:>7}"
    print(line.format(*head))
    for peft, tf, causal, seq2seq, clock in rows:
        w = clock.wall
        print(line.format(peft, tf, causal, seq2seq, *(f"{w.get(k, 0):.0f}" for k in ("venv", "peft", "mptkit")),
                          f"{sum(w.values()):.0f}", f"{sum(clock.cpu.values()):.0f}"))  # fmt: skip
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{len(versions)} PEFT versions x {len(KINDS)} models in {time.monotonic() - start:.0f} s wall, "
        f"{_cpu() - cpu0:.0f} s CPU (load average {load:.1f}, {os.cpu_count()} CPUs; torch 2.13.0). Cells: checks "
        "passed/'cannot' (PEFT < 0.9's source-task init fails on any file, its bug, as mptkit inspect says)/failed"
    )
    for f in failures:
        print("FAIL", f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
