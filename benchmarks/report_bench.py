"""The report's cost beside `mptkit similarity` of the same bank (issue 24's target: at most 2x),
both whole processes, alternated in the same run (medians), with peak RSS.

    python -m benchmarks.report_bench             # T=1000, N=100, r=1, d=4096 (the target's size)
    python -m benchmarks.report_bench --quick     # T=200, N=20, d=512 (seconds)

`similarity` prints its default text (each task's 3 nearest, as above 20 tasks); `report` writes the
page. Both compute the same blocked Gram of the full prompts; the report adds value_stats, the
singular values of cols[k] @ rows[k], the clustering, the 2-D map and the page.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

from benchmarks.run import PY, run_once

MAKE = (
    "import torch; from safetensors.torch import save_file; g = torch.Generator().manual_seed(0); "
    "T, N, r, d = {T}, {N}, {r}, {d}; "
    "save_file({{'prompt_embeddings': torch.randn(N, d, generator=g), "
    "'prefix_task_cols': torch.randn(T, N, r, generator=g), 'prefix_task_rows': torch.randn(T, r, d, generator=g)}}, "
    "{path!r}, metadata={{'format': 'pt'}})"
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    T, N, r, d = (200, 20, 1, 512) if a.quick else (1000, 100, 1, 4096)
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1")
    with tempfile.TemporaryDirectory(prefix="mptkit-report-bench-") as tmp:
        bank = os.path.join(tmp, "bank.safetensors")
        subprocess.run([PY, "-c", MAKE.format(T=T, N=N, r=r, d=d, path=bank)], check=True)
        page = os.path.join(tmp, "report.html")
        sim_argv = [PY, "-m", "mptkit", "similarity", bank]
        rep_argv = [PY, "-m", "mptkit", "report", bank, "-o", page, "--force"]
        sims, reps = [], []
        for _ in range(a.repeat):  # alternated, so that a busy machine slows both alike
            sims.append(run_once(sim_argv, env))
            reps.append(run_once(rep_argv, env))
        size = Path(page).stat().st_size
    s_wall, r_wall = statistics.median(w for w, _ in sims), statistics.median(w for w, _ in reps)
    s_rss, r_rss = max(m for _, m in sims), max(m for _, m in reps)
    print(f"bank T={T}, N={N}, r={r}, d={d}; medians of {a.repeat} alternated runs")
    print("| command | wall s | peak RSS MB | vs similarity | target |")
    print("| --- | ---: | ---: | ---: | --- |")
    print(f"| mptkit similarity BANK | {s_wall:.2f} | {s_rss:.0f} | 1.00x | baseline |")
    ok = "yes" if r_wall <= 2 * s_wall else "NO"
    print(f"| mptkit report BANK -o page.html | {r_wall:.2f} | {r_rss:.0f} | {r_wall / s_wall:.2f}x | <= 2x: {ok} |")
    print(f"page: {size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
