"""What the benchmark scripts in tools/ share: describing the machine."""
import platform
from pathlib import Path


def cpu_name():
    """The CPU's model name (from /proc/cpuinfo), or platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or ""
