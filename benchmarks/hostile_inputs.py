"""Hostile inputs and unlucky machines (no Hub): each attack run as a real ``python -m mptkit``
process, for this checkout and, with ``--before``, for another one in the same run (the baseline).

    python -m benchmarks.hostile_inputs                          # this checkout
    python -m benchmarks.hostile_inputs --before /path/to/old    # before/after, side by side
    python -m benchmarks.hostile_inputs --only similarity        # attacks whose name contains it

One row per attack and checkout: exit status, wall time, CPU time, peak RSS (the child's own:
tests/support/measured.py) and the first line it printed on stderr. Each run is capped at
``--cpu`` CPU seconds and ``--rss`` of address space (a run past them shows as killed). The same
attacks are tests: tests/ops/test_similarity_memory.py, test_selection_is_linear.py,
test_decompose_memory.py, test_nonfinite_inputs_are_refused.py, test_narrow_dtypes_keep_their_range.py,
tests/formats/test_pickle_storages_are_checked.py, tests/reliability/test_input_truncated_while_read.py,
test_environment_errors.py, test_outputs_by_identity.py (task names), tests/cli/test_output_streams.py,
test_no_numpy_warnings.py. Two
attacks of the round are tests only, not rows here: a ``.bin`` truncated while read and an output
link that vanishes while resolved need the process stopped at a known point
(tests/reliability/test_input_truncated_while_read.py, test_environment_errors.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from tests.support.banks import write_bank
from tests.support.crafted import claiming_bank, many_storages
from tests.support.measured import run_measured

ROOT = Path(__file__).resolve().parent.parent


def _tiny(path: Path, T: int, names: bool = False) -> Path:
    g = torch.Generator().manual_seed(0)
    return write_bank(
        path,
        torch.randn(1, 2, generator=g),
        torch.randn(T, 1, 1, generator=g),
        torch.randn(T, 1, 2, generator=g),
        [f"n{i}" for i in range(T)] if names else None,
    )


def _small(path: Path, change=None, dtype=torch.float32) -> Path:
    g = torch.Generator().manual_seed(1)
    t = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((4, 8), (3, 4, 2), (3, 2, 8))]
    if change:
        change(*t)
    return write_bank(path, *(x.to(dtype) for x in t), ["a", "b", "c"])


def _short_member(path: Path) -> Path:
    good = path.with_name("good.bin")
    g = torch.Generator().manual_seed(2)
    torch.save({k: torch.randn(*s, generator=g) for k, s in _SHAPES.items()}, good)
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, data[: len(data) // 2] if info.filename.endswith("/data/0") else data)
    return path


_SHAPES = {"prompt_embeddings": (4, 8), "prefix_task_cols": (3, 4, 2), "prefix_task_rows": (3, 2, 8)}


def attacks(tmp: Path):
    """(name, argv, limits) of each attack; files are made on first use."""
    out = tmp / "out"

    def o(name):
        return str(out / name)

    t20k = _tiny(tmp / "t20k.safetensors", 20_000)
    yield "similarity --top 1, 20,000 tasks", ["similarity", t20k, "--top", "1", "--json"], {}
    yield "report, 20,000 tasks", ["report", t20k, "-o", o("r.html")], {}
    t60k = _tiny(tmp / "t60k.safetensors", 60_000, names=True)
    yield "remove 0-59990 of 60,000", ["remove", t60k, "--tasks", "0-59990", "-o", o("r.safetensors")], {}
    names = ",".join(f"n{i}" for i in range(0, 60_000, 5)[:13_000])
    yield "slice 12,000 names of 60,000", ["slice", t60k, "--tasks", names, "-o", o("s.safetensors")], {}
    table = tmp / "p100k.npy"
    np.save(table, np.random.default_rng(0).standard_normal((100_000, 1, 2)).astype(np.float32))
    yield "decompose 100,000 tiny prompts", ["decompose", table, "--rank", "1", "-o", o("d.safetensors")], {}
    many = many_storages(tmp / "many.bin", 300_000)
    yield "pickle of 300,000 storages", ["validate", many], {}
    short = _short_member(tmp / "short.bin")
    yield "zip .bin, storage member short", ["convert", short, "-o", o("c.safetensors")], {}

    def nan_shared(pe, c, r):
        pe[1, 2] = float("nan")

    nan = _small(tmp / "nan.safetensors", nan_shared)
    yield (
        "rank --max-error, NaN shared",
        ["rank", nan, "--rank", "1", "--max-error", "0.5", "-o", o("k.safetensors")],
        {},
    )

    def inf_cols(pe, c, r):
        c[1, 0, 0] = float("inf")

    inf = _small(tmp / "inf.safetensors", inf_cols)
    yield "rank, Inf in a task", ["rank", inf, "--rank", "1", "-o", o("k2.safetensors")], {}

    def big(pe, c, r):
        pe[0, 0] = 1e5

    wide = _small(tmp / "wide.safetensors", big)
    yield "convert --dtype float16, 1e5", ["convert", wide, "--dtype", "float16", "-o", o("f16.safetensors")], {}

    def huge(pe, c, r):
        c[:, 0, 0] = 1.5e308

    f64 = _small(tmp / "f64.safetensors", huge, torch.float64)
    yield "inspect --values, float64 1.5e308", ["inspect", "--values", f64], {}
    yield "derive average, float64 1.5e308", ["derive", f64, "--mode", "average", "-o", o("avg.safetensors")], {}
    big17 = claiming_bank(tmp / "big17.safetensors", 4_300_000_000)
    yield "inspect --values 17 GB, ulimit -v 3G", ["inspect", "--values", big17], {"address_space": 3 << 30}
    names = write_bank(
        tmp / "names.safetensors",
        *(torch.randn(*s, generator=torch.Generator().manual_seed(3)) for s in _SHAPES.values()),
        ["日本語", "Ελληνικά", "русский"],
    )
    # task names that would be paths: ../ climbs out of the output, / starts anywhere
    escape = ["../../../escaped-by-name", str(tmp / "absolute-by-name"), "plain"]
    paths = write_bank(
        tmp / "paths.safetensors",
        *(torch.randn(*s, generator=torch.Generator().manual_seed(4)) for s in _SHAPES.values()),
        escape,
    )
    yield (
        "export --all, task names ../ and /abs",
        [
            "export",
            paths,
            "--all",
            "--task-type",
            "CAUSAL_LM",
            "--num-virtual-tokens",
            "4",
            "-o",
            o("adapters/prompts"),
        ],
        {"escapes": [tmp / "escaped-by-name", out / "escaped-by-name", tmp / "absolute-by-name"]},
    )
    yield "inspect | head -1 (reader gone)", ["inspect", names], {"stdout": "closed pipe"}
    yield "inspect --json > /dev/full", ["inspect", "--json", names], {"stdout": "/dev/full"}
    yield "inspect, latin-1 stdout, non-Latin", ["inspect", names], {"env": {"PYTHONIOENCODING": "latin-1"}}


def measure(src: Path | None, argv, limits, cpu: int, space: int, work: Path) -> dict:
    import shutil

    limits = dict(limits)
    env = {**limits.pop("env", {}), **({"PYTHONPATH": str(src)} if src else {})}
    stdout = limits.pop("stdout", None)
    escapes = limits.pop("escapes", [])  # paths outside the output that the attack aims at
    shutil.rmtree(work / "out", ignore_errors=True)
    (work / "out").mkdir()
    with contextlib.ExitStack() as stack:
        if stdout == "closed pipe":  # a reader that went away before the first byte (| head -1 at its worst)
            read, write = os.pipe()
            os.close(read)
            stack.callback(os.close, write)
            stdout = write
        elif stdout is not None:
            stdout = stack.enter_context(open(stdout, "wb"))
        m = run_measured(*argv, env=env, cwd=work, cpu_limit_s=cpu, stdout=stdout, **{"address_space": space, **limits})
    said = next((x for x in m.stderr.splitlines() if x.strip()), "")
    outside = [p for p in escapes if os.path.lexists(p)]
    for p in outside:
        shutil.rmtree(p) if os.path.isdir(p) and not os.path.islink(p) else os.remove(p)
    if outside:
        said = f"WROTE OUTSIDE THE OUTPUT: {', '.join(os.path.basename(p) for p in outside)}; {said}"
    if not said and m.returncode != 0:
        said = f"(killed by signal {-m.returncode})" if m.returncode < 0 else "(nothing)"
    return {
        "rc": m.returncode,
        "wall_s": round(m.wall_s, 2),
        "cpu_s": round(m.cpu_s, 2),
        "rss_mb": round(m.peak_rss_mb),
        "said": said[:110],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", type=Path, help="another checkout of mptkit, measured in the same run")
    ap.add_argument("--only", default="")
    ap.add_argument("--cpu", type=int, default=120, help="CPU seconds each run may use")
    ap.add_argument("--space-gb", type=float, default=8, help="address space each run may use (ulimit -v), GB")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mptkit-hostile-") as t:
        tmp = Path(t)
        work = tmp / "work"
        (work / "out").mkdir(parents=True)
        for name, argv, limits in attacks(work):
            if args.only not in name:
                continue
            argv = [str(a) for a in argv]
            for label, src in (("before", args.before), ("after", ROOT)) if args.before else (("this", ROOT),):
                space = int(args.space_gb * (1 << 30))
                r = {"attack": name, "checkout": label, **measure(src, argv, limits, args.cpu, space, work)}
                rows.append(r)
                if not args.json:
                    print(
                        f"{name:<36} {label:<6} rc={r['rc']!s:<4} {r['wall_s']:>7.2f} s {r['cpu_s']:>7.2f} CPU s "
                        f"{r['rss_mb']:>6} MB | {r['said']}",
                        flush=True,
                    )
    if args.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    main()
