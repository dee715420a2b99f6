"""Shared helpers of the benchmark scripts: machine record, interleaved timing, tables and JSON output.

Every figure is measured next to its baseline in the same process, interleaved ``A, B, A, B, ...``, so that a
load spike from other users of a shared machine hits both sides; reports give ratios and medians.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from flowlet.data.io import write_json_atomic
from flowlet.runtime import allocator_tuned, tune_cpu_allocator

__all__ = [
    "add_common_args",
    "interleaved",
    "machine_info",
    "max_rss_mib",
    "print_table",
    "resolve_device",
    "setup",
    "sync",
    "write_result",
]

log = logging.getLogger("benchmarks")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def add_common_args(parser: argparse.ArgumentParser, name: str, *, allocator_both: bool = False) -> None:
    """``--device``, ``--threads``, ``--repeats``, ``--out`` (JSON path), ``--full`` and ``--allocator``."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions per variant")
    parser.add_argument("--out", default=str(RESULTS_DIR / f"{name}.json"), help="JSON output file")
    parser.add_argument("--full", action="store_true", help="also run the large (slow) sizes")
    parser.add_argument(
        "--allocator",
        choices=["tuned", "default", "both"] if allocator_both else ["tuned", "default"],
        default="both" if allocator_both else "tuned",
        help="tuned (as the flowlet commands run: flowlet.runtime.tune_cpu_allocator) or glibc's default"
        + ("; both: a default pass, then a tuned pass in the same process" if allocator_both else ""),
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def setup(args: argparse.Namespace) -> torch.device:
    """Logging, thread count and device from the common flags."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(max(1, args.threads))
    if getattr(args, "allocator", "default") == "tuned":
        tune_cpu_allocator()
    return resolve_device(args.device)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work so that wall-clock times are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def max_rss_mib() -> float:
    """Peak resident set size of this process so far (MiB; Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on, including the load average at the time of the call."""
    info = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "allocator": allocator_tuned(),
        "loadavg": list(os.getloadavg()),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int, device: torch.device, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Time several variants round-robin (A, B, A, B, ...) after ``warmup`` untimed rounds.

    Returns:
        ``{name: {"median_s", "min_s", "mean_s", "n"}}``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
            sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {
        k: {"median_s": statistics.median(v), "min_s": min(v), "mean_s": statistics.fmean(v), "n": len(v)}
        for k, v in times.items()
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value)


def print_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Print ``rows`` as a Markdown table on stdout and return the text."""
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    text = "\n".join(lines)
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    return text


def write_result(path: str | os.PathLike, name: str, device: torch.device, payload: dict[str, Any]) -> Path:
    """Write ``{"benchmark", "machine", "command", **payload}`` to ``path`` (load average taken at the end)."""
    record = {
        "benchmark": name,
        "machine": machine_info(device),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        **payload,
    }
    out = write_json_atomic(path, record)
    log.info("wrote %s", out)
    return out


def model_config(name: str, **overrides: Any):
    """``UNetConfig`` of a packaged training config's ``model`` section (``demo``, ``paper-base``, ...)."""
    import yaml

    from configs import config_path
    from flowlet.models.config import UNetConfig

    with open(config_path("flowlet", name), encoding="utf-8") as handle:
        section = dict(yaml.safe_load(handle)["model"])
    section.update(overrides)
    return UNetConfig.from_dict(section)


def random_model(config, seed: int = 0) -> torch.nn.Module:
    """A ``ConditionalUNet`` whose zero-initialised output layers are re-drawn, so that it outputs non-zero values.

    Timing does not depend on the values, but the bf16-vs-fp32 error and the solver errors need a network whose
    output is not identically zero.
    """
    from flowlet.models.unet import ConditionalUNet

    torch.manual_seed(seed)
    model = ConditionalUNet(config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0.0, 1.0 / max(1, p[0].numel()) ** 0.5)
    return model.eval()
