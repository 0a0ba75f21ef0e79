"""Thread settings when the cores are shared: a small fc epoch alone and beside another busy process.

Each configuration runs in a fresh process (OpenMP reads its environment at start-up): torch's
intra-op threads (all cores, or 1) and OpenMP's wait policy (spinning threads, the default, or
``OMP_WAIT_POLICY=PASSIVE``). The competitor is another process doing dense matrix products on
one thread, as a second job of the same user would. OpenMP threads that spin at barriers while
another process holds a core stall every parallel region: the case the ``mondeq`` command's
defaults must not fall into.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from . import Section, markdown_table

CONFIGS = (
    ("all cores, spinning (OpenMP default)", None, "ACTIVE"),
    ("all cores, passive", None, "PASSIVE"),
    ("1 thread", 1, "ACTIVE"),
)


def child(batches: int, width: int) -> dict:
    """Time ``batches`` fc training steps (batch 128, synthetic 784-pixel images)."""
    import torch
    import torch.nn.functional as F

    from ..errors import ignore_convergence_warnings
    from ..models import MonDEQClassifier, preset_config

    torch.manual_seed(0)
    model = MonDEQClassifier(preset_config("fc", "fashion-mnist", 1, 28, 10, width=width))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    with ignore_convergence_warnings():
        for k in range(batches + 3):
            if k == 3:
                start = time.perf_counter()
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    return {"seconds_per_batch": (time.perf_counter() - start) / batches, "threads": torch.get_num_threads()}


COMPETITOR = (
    "import torch, time\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(512, 512)\n"
    "end = time.time() + 600\n"
    "while time.time() < end:\n"
    "    a = (a @ a).clamp_(-1, 1)\n"
)


def measure(threads: int | None, policy: str, busy: bool, batches: int, width: int) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    env.pop("OMP_NUM_THREADS", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if busy else None
    try:
        if competitor is not None:
            time.sleep(1.0)  # let it start computing
        command = [sys.executable, "-m", "mondeq.benchmarks.threads", str(batches), str(width)]
        out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()
    return json.loads(out.strip().splitlines()[-1])


def run(tiny: bool = False) -> dict:
    batches, width = (5, 16) if tiny else (200, 87)
    rows = []
    for name, threads, policy in CONFIGS:
        for busy in (False, True):
            result = measure(threads, policy, busy, batches, width)
            rows.append({"config": name, "busy": busy, **result})
    return {"rows": rows, "batches": batches, "width": width, "cores": os.cpu_count()}


def markdown(result: dict) -> str:
    lines = [
        f"fc model ({result['width']} hidden units), batch 128, {result['batches']} training steps, "
        f"{result['cores']} cores; 'busy': another process computes on one core meanwhile.",
        "",
    ]
    rows = []
    for name, _, _ in CONFIGS:
        alone = next(r for r in result["rows"] if r["config"] == name and not r["busy"])
        busy = next(r for r in result["rows"] if r["config"] == name and r["busy"])
        seconds = (alone["seconds_per_batch"], busy["seconds_per_batch"])
        rows.append([name, alone["threads"], *(f"{1e3 * s:.1f}" for s in seconds), f"{seconds[1] / seconds[0]:.1f}x"])
    header = ["threads and wait policy", "torch threads", "ms per step, alone", "ms per step, busy", "slowdown when busy"]
    lines += markdown_table(header, rows)
    return "\n".join(lines)


SECTION = Section(title="10. Threads on shared cores", order=11, run=run, markdown=markdown)

if __name__ == "__main__":
    print(json.dumps(child(int(sys.argv[1]), int(sys.argv[2]))))
