"""`conveyor --help` wall time against `mlflow --help`, measured in the same run.

.venv/bin/python bench/cli_startup.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def wall(command: list[str], repeat: int) -> list[float]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}
    subprocess.run(command, capture_output=True, check=True, env=env)  # warm the page cache
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, capture_output=True, check=True, env=env)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    ours = wall([str(BIN / "conveyor"), "--help"], args.repeat)
    python = wall([sys.executable, "-c", "pass"], args.repeat)
    mlflow = wall([str(BIN / "mlflow"), "--help"], args.repeat)
    p50 = {name: statistics.median(t) for name, t in (("conveyor", ours), ("python", python), ("mlflow", mlflow))}
    print(f"bare python start     p50 {p50['python'] * 1000:7.0f} ms")
    print(f"conveyor --help       p50 {p50['conveyor'] * 1000:7.0f} ms   (goal <= 300 ms)")
    print(f"mlflow --help         p50 {p50['mlflow'] * 1000:7.0f} ms")
    print(f"ratio conveyor/mlflow     {p50['conveyor'] / p50['mlflow']:.2f}")


if __name__ == "__main__":
    main()
