"""Small helpers shared by the benchmarks: timing, statistics, memory, machine facts."""

from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def timed(fn: Callable[[], Any], sync: Callable[[], None] | None = None) -> tuple[float, Any]:
    """(seconds, result) of one call, measured with perf_counter."""
    if sync:
        sync()
    t0 = time.perf_counter()
    result = fn()
    if sync:
        sync()
    return time.perf_counter() - t0, result


# ------------------------------------------------------------------ memory


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (Linux: VmHWM) so a section's own peak can be read."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """Peak resident memory of this process (since the last reset where supported), in MiB."""
    kb = _status_kb("VmHWM")
    if kb is None:
        ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        kb = ru / 1024 if sys.platform == "darwin" else ru  # bytes on macOS, KiB on Linux
    return kb / 1024


def rss_mb() -> float:
    kb = _status_kb("VmRSS")
    return kb / 1024 if kb is not None else peak_rss_mb()


def maxrss_mb() -> float:
    """resource.getrusage maxrss of this process over its whole life, in MiB."""
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru / (1024 * 1024) if sys.platform == "darwin" else ru / 1024


# ------------------------------------------------------------------ machine


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    import importlib.metadata as md

    def version(pkg: str) -> str:
        try:
            return md.version(pkg)
        except md.PackageNotFoundError:
            return "-"

    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": cores(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
        if hasattr(os, "sysconf") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": version("torch"),
        "transformers": version("transformers"),
        "sqlalchemy": version("sqlalchemy"),
        "sqlite": __import__("sqlite3").sqlite_version,
        "tokentree": version("tokentree"),
    }
    try:
        info["loadavg_start"] = tuple(round(x, 2) for x in os.getloadavg())
    except OSError:  # pragma: no cover
        pass
    return info


# ------------------------------------------------------------------ results


@dataclass
class Figure:
    """One row of the results table."""

    section: str
    name: str
    value: float | None  # median
    unit: str  # "ms", "s", "B", "MiB", "x", "passes"
    n: int = 1  # repeats behind the median
    low: float | None = None  # the fastest repeat (same unit), where n > 1
    baseline: str = ""  # what `ratio` divides by, in words
    ratio: float | None = None
    passes: float | None = None  # forward passes per operation (counted)
    note: str = ""


@dataclass
class Target:
    name: str
    goal: str
    measured: str
    met: bool | None  # None: not measured in this run
    margin: str = ""  # "3.2x under", "1.3x over"


@dataclass
class Results:
    meta: dict[str, Any] = field(default_factory=dict)
    figures: list[Figure] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)  # per-repeat samples, counts

    def add(self, *args, **kwargs) -> Figure:
        fig = Figure(*args, **kwargs)
        self.figures.append(fig)
        return fig

    def figure(self, section: str, name: str) -> Figure | None:
        return next((f for f in self.figures if f.section == section and f.name == name), None)


def fmt_value(v: float | None, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms":
        return f"{v:.2f} ms" if v < 10 else f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms"
    if unit == "s":
        return f"{v:.2f} s"
    if unit == "B":
        return f"{v:.0f} B"
    if unit == "MiB":
        return f"{v:.0f} MiB"
    if unit == "x":
        return f"{v:.2f}x"
    if unit == "passes":
        return f"{v:g}"
    return f"{v:g} {unit}"


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "-"
    return f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


def figure_row(f: Figure) -> str:
    """One Markdown row: | section | figure | median | min | n | ratio | to | passes | note |"""
    passes = "-" if f.passes is None else f"{f.passes:g}"
    low = fmt_value(f.low, f.unit) if f.low is not None and f.n > 1 else ""
    return (f"| {f.section} | {f.name} | {fmt_value(f.value, f.unit)} | {low} | {f.n} | {fmt_ratio(f.ratio)} | "
            f"{f.baseline} | {passes} | {f.note} |")


# ------------------------------------------------------------------ results.md sections

REAL_MODEL_HEADING = "## Real model: SmolLM2-135M-Instruct"  # written by benchmarks/real_model.py


def get_section(text: str, heading: str) -> str:
    """The `heading` line and what follows it up to the next `## ` heading ("" if absent)."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    if start is None:
        return ""
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "".join(lines[start:end])


def put_section(text: str, section: str) -> str:
    """`text` with `section` (which starts with its `## ` heading line) in place of the section
    of that heading, or, new, before the first `## ` heading (after a header's bullets)."""
    heading = section.splitlines()[0].rstrip()
    section = section.rstrip("\n") + "\n\n"
    old = get_section(text, heading)
    if old:
        return text.replace(old, section, 1)
    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.startswith("## ")), len(lines))
    head = "".join(lines[:at])
    if head and not head.endswith("\n\n"):
        head = head.rstrip("\n") + "\n\n"
    return head + section + "".join(lines[at:])
