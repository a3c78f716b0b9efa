"""Remote banks: what an operation on an ``hf://`` bank transfers and how long it takes,
beside downloading the same number of bytes in one request, on the loopback Hub of
tests/fakehub (which counts the bytes it sends).

    python -m benchmarks.remote_bench            # a 1 GB bank: T=8,000, N=128, d=32,768, r=1, F32
    python -m benchmarks.remote_bench --quick    # a 100 MB bank (CI-sized)
    python -m benchmarks.remote_bench --names    # the same with task names (a larger header)

Each operation runs in this process through the Python API, as a command does (mptkit.load of the
hf:// bank, the operation, the write), --repeat times; the table gives the median wall time, the
bytes the server sent for the weights file, the requests, and the bound the design sets (header +
N x d x 4 + the tasks' rows + 64 kB). "one request" is a single Range request for that many bytes
through the same client session, written to a file and synced (the floor for moving those bytes),
"whole file" a download of the whole file, for scale.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from tests.fakehub import Blob, HubServer
from tests.support.banks import sparse_bank

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--names", action="store_true", help="name every task (t00000, ...)")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    T, N, r, d = (800, 128, 1, 32_768) if args.quick else (8_000, 128, 1, 32_768)
    tmp = Path(tempfile.mkdtemp(prefix="mptkit-remote-bench-"))
    names = [f"t{i:05d}" for i in range(T)] if args.names else None
    layout = sparse_bank(tmp / "adapter_model.safetensors", T=T, N=N, r=r, d=d, filled=(0, 3, 5, 7, T - 1), names=names)
    cfg = json.loads((ROOT / "examples" / "bank" / "adapter_config.json").read_text())
    cfg.update(
        num_tasks=T, num_ranks=r, token_dim=d, num_virtual_tokens=N, num_transformer_submodules=1, task_type="CAUSAL_LM"
    )
    blob = Blob.file(tmp / "adapter_model.safetensors")
    _ = blob.sha256  # the listing's LFS sha256, computed once
    per_task = (N * r + r * d) * 4
    with HubServer() as hub:
        os.environ.update(hub.client_env(tmp))
        hub.commit("owner/bank", {"adapter_config.json": json.dumps(cfg).encode(), "adapter_model.safetensors": blob})
        import mptkit
        from mptkit._derive import derive
        from mptkit._edit import slice_tasks
        from mptkit.hub import pull, remote_summary
        from mptkit.serve._runtime import TaskPrompts

        out = tmp / "out"

        def fresh() -> Path:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            return out

        ops = [
            ("inspect (header)", 0, lambda: remote_summary("hf://owner/bank"), False),
            (
                "derive --mode exact --task 7",
                1,
                lambda: mptkit.save(derive(mptkit.load("hf://owner/bank"), "exact", task=7), fresh() / "d.safetensors"),
                True,
            ),
            (
                "slice --tasks 3,5,T-1",
                3,
                lambda: mptkit.save(slice_tasks(mptkit.load("hf://owner/bank"), [3, 5, T - 1]), fresh() / "s"),
                True,
            ),
            (
                "TaskPrompts.from_bank(tasks=[3, 5])",
                2,
                lambda: TaskPrompts.from_bank("hf://owner/bank", tasks=[3, 5]),
                True,
            ),
            ("pull --tasks 0,7", 2, lambda: pull("owner/bank", fresh() / "p", tasks="0,7"), True),
        ]
        from huggingface_hub.utils import get_session

        session = get_session()
        url = f"{hub.url}/owner/bank/resolve/{hub.repos['owner/bank'].refs['main']}/adapter_model.safetensors"

        def one_request(n: int) -> float:
            """n bytes in one Range request, written to a file and synced (as mptkit's outputs are)."""
            t0 = time.perf_counter()
            got = 0
            with open(tmp / "one-request.bin", "wb") as f:
                with session.stream(
                    "GET", url, headers={"Range": f"bytes=0-{n - 1}", "Accept-Encoding": "identity"}
                ) as resp:
                    for c in resp.iter_raw():
                        f.write(c)
                        got += len(c)
                f.flush()
                os.fsync(f.fileno())
            assert got == n, (got, n)
            return time.perf_counter() - t0

        print(
            f"bank: T={T:,} N={N} r={r} d={d:,} F32, {blob.size / 1e9:.2f} GB, header {layout['header']:,} bytes"
            f"{' (task names)' if names else ''}; median of {args.repeat} runs (after one warm-up)"
        )
        print(f"{'operation':<38}{'sent':>12}{'bound':>12}{'reqs':>6}{'mptkit':>10}{'one request':>13}{'ratio':>7}")
        rows = []
        for name, k, fn, with_p in ops:
            fn()  # warm-up: imports, the config into the HF cache
            times, sent, reqs = [], [], []
            for _ in range(args.repeat):
                hub.clear()
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
                sent.append(hub.bytes_sent(r"adapter_model\.safetensors$"))
                reqs.append(len(list(hub.requests)))
            n = max(sent)
            base = statistics.median(one_request(n) for _ in range(args.repeat))
            limit = layout["header"] + (N * d * 4 if with_p else 0) + k * per_task + (64 << 10)
            t = statistics.median(times)
            rows.append((name, n, limit, max(reqs), t, base))
            print(
                f"{name:<38}{n:>12,}{limit:>12,}{max(reqs):>6}{t * 1e3:>8.1f}ms{base * 1e3:>11.1f}ms{t / base:>6.2f}x",
                flush=True,
            )
        whole = statistics.median(one_request(blob.size) for _ in range(2))
        print(f"{'whole file, one request':<38}{blob.size:>12,}{'':>12}{1:>6}{'':>10}{whole * 1e3:>11.1f}ms")


if __name__ == "__main__":
    main()
