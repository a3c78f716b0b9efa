"""``decompose`` holds its prompts' data and its output, not objects a task: its memory grows with
the bytes of the prompts and factors, in blocks of tasks. 100,000 tiny prompts (N x d = 1 x 2) once
peaked at 630 MB, ~4 kB a task: an Array a prompt, every task of the set in one pool of the fit (a
few tensors and tuples each in flight), and two tensors a task kept until the end.

Measured as the growth of the child's own peak RSS between two table sizes (the interpreter and
torch cancel out), and as the largest pool the fit builds."""

from __future__ import annotations

import numpy as np

from mptkit import _als as als
from mptkit._decompose import decompose
from mptkit.formats import read_prompts
from tests.support.measured import killed_for_cpu, run_measured


def _table(path, T: int):
    np.save(path, np.random.default_rng(0).standard_normal((T, 1, 2)).astype(np.float32))
    return path


def test_memory_grows_with_the_data_not_with_objects_a_task(tmp_path):
    peaks = {}
    for T in (5_000, 40_000):
        src = _table(tmp_path / f"p{T}.npy", T)
        m = run_measured("decompose", src, "--rank", "1", "-o", tmp_path / f"d{T}.safetensors", cpu_limit_s=120)
        assert not killed_for_cpu(m) and m.returncode == 0, (m.returncode, m.stderr[-800:])
        peaks[T] = m.peak_rss_mb
    per_task_kb = (peaks[40_000] - peaks[5_000]) * 1024 / 35_000
    print(f"decompose: peak {peaks[5_000]:.0f} MB at 5,000 prompts, {peaks[40_000]:.0f} MB at 40,000")
    assert per_task_kb < 1.5, f"{per_task_kb:.2f} kB a task"  # was ~4 kB: 140 MB more for 35,000 prompts


def test_the_fit_never_pools_more_than_a_block_of_tasks(tmp_path, monkeypatch):
    seen = []
    real = als.Pool.__init__

    def pool(self, W2, rank, capacity, **kw):
        seen.append(capacity)
        real(self, W2, rank, capacity, **kw)

    monkeypatch.setattr(als.Pool, "__init__", pool)
    monkeypatch.setattr(als, "MAX_TASKS", 64)
    bank = decompose(read_prompts([_table(tmp_path / "p.npy", 1000)]), 1)
    assert bank.num_tasks == 1000
    assert seen and max(seen) <= 4 * 64, max(seen)  # the float32 stage's pool holds four times the float64's
