"""Selecting tasks, and reporting what a selection did, cost time linear in the number of tasks T.

Once each name looked up scanned the list of names (13,000 names of 60,000: 15-18 s), the report of
``remove`` rebuilt the set of removed tasks for every task (0-59990 of 60,000: 50 s), and a selection
from an array of many segments walked them all for every row. The cost is counted here in the
operations that were quadratic (name comparisons, passes over the removed tasks, segments visited),
not in seconds; the whole commands run in a child under a CPU-time limit the quadratic work exceeded.
"""

from __future__ import annotations

import torch

from mptkit._bank import select_tasks
from mptkit._render import edit_report
from mptkit._tensor import Array, Segment
from tests.support.banks import memory_bank, write_bank
from tests.support.measured import killed_for_cpu, run_measured


class _Name(str):
    """A task name that counts how often it is compared for equality."""

    compared = 0

    def __eq__(self, other):
        _Name.compared += 1
        return str.__eq__(self, other)

    __hash__ = str.__hash__


def test_names_are_found_without_scanning_the_list():
    T = 5000
    bank = memory_bank(T=T, N=1, r=1, d=1, names=[_Name(f"task-{i}") for i in range(T)])
    wanted = [f"task-{i}" for i in range(0, T, 3)]
    _Name.compared = 0
    idx = select_tasks(bank, ",".join(wanted))
    assert idx == list(range(0, T, 3))
    # a scan compares each name with every name before it: ~T*len(wanted)/2 = 4 million here
    assert _Name.compared <= 4 * (T + len(wanted)), _Name.compared


class _Passes(list):
    """A list of indices that counts how many times it is walked."""

    walks = 0

    def __iter__(self):
        _Passes.walks += 1
        return super().__iter__()


def test_the_remove_report_walks_the_removed_tasks_a_few_times():
    T, kept = 3000, 5
    bank = memory_bank(T=kept, N=1, r=1, d=1)
    dropped = _Passes(range(T - kept))
    bank.provenance = [{"operation": "remove", "arguments": {"tasks": dropped}, "sources": []}]
    _Passes.walks = 0
    lines = edit_report(bank, "out.safetensors", ["in.safetensors"])
    assert "removed tasks 0-2994" in lines[1] and "kept tasks 2995-2999" in lines[1], lines
    assert _Passes.walks <= 5, _Passes.walks  # once a task: 3,000


class _Visits(tuple):
    """Segments that count how many of them are looked at."""

    seen = 0

    def __iter__(self):
        for s in tuple.__iter__(self):
            _Visits.seen += 1
            yield s

    def __getitem__(self, i):
        _Visits.seen += 1
        return tuple.__getitem__(self, i)


def test_a_selection_from_many_segments_finds_each_row_directly():
    S = 2000
    bufs = [memoryview(bytearray(i.to_bytes(4, "little"))) for i in range(S)]
    arr = Array("I32", (S,), [Segment(0, 4, buffer=b) for b in bufs])  # one segment a row, none adjacent
    arr.segments = _Visits(arr.segments)
    _Visits.seen = 0
    picked = arr.rows(list(range(S - 1, -1, -1)))
    assert bytes(picked.read()) == b"".join(i.to_bytes(4, "little") for i in range(S - 1, -1, -1))
    assert _Visits.seen <= 10 * S, _Visits.seen  # a walk from the first segment for each row: ~2 million


def test_the_report_lists_a_bounded_number_of_runs():
    bank = memory_bank(T=13, N=1, r=1, d=1)
    picked = list(range(0, 26_000, 2))
    bank.provenance = [{"operation": "slice", "arguments": {"tasks": picked}, "sources": []}]
    line = edit_report(bank, "out.safetensors", ["in.safetensors"])[1]
    assert line.startswith("  kept tasks 0, 2, 4,") and "... (13,000 in all)" in line, line
    assert len(line) < 400, len(line)


def test_selecting_and_removing_in_a_bank_of_60000_tasks(tmp_path):
    T = 60_000
    names = [f"n{i}" for i in range(T)]
    src = write_bank(tmp_path / "many.safetensors", torch.ones(1, 1), torch.ones(T, 1, 1), torch.ones(T, 1, 1), names)
    # CPU-time bounds far above the linear work (about 3 s here) and far below the quadratic one (30-50 s)
    m = run_measured("remove", src, "--tasks", "0-59990", "-o", tmp_path / "r.safetensors", cpu_limit_s=20)
    assert not killed_for_cpu(m) and m.returncode == 0, (m.returncode, m.stderr[-500:])
    assert "kept tasks 59991-59999" in m.stdout
    wanted = ",".join(names[::5])
    m = run_measured("slice", src, "--tasks", wanted, "-o", tmp_path / "s.safetensors", cpu_limit_s=20)
    assert not killed_for_cpu(m) and m.returncode == 0, (m.returncode, m.stderr[-500:])
    assert "12,000 tasks" in m.stdout
