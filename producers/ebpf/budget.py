"""The eBPF agent's CPU budget: a CFS quota on a cgroup of its own (what a DaemonSet's CPU limit sets),
and the shedding ratio that keeps its work inside that budget. Flows are shed whole, in the kernel,
by a hash of the client endpoint (socket_trace.c `shed`): never single events of a conversation.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from tracetap.errors import TracetapError

log = logging.getLogger(__name__)

CFS_PERIOD_US = 100_000
_CGROUP_ROOT = Path("/sys/fs/cgroup")


class BudgetError(TracetapError):
    """The CPU quota cannot be set here; the message says why."""


@dataclass
class CpuQuota:
    """The agent's process in a cgroup of its own with a CFS quota: cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`."""

    path: Path
    parent: Path

    @classmethod
    def apply(cls, cores: float, pid: int | None = None, root: Path = _CGROUP_ROOT) -> CpuQuota:
        pid = pid or os.getpid()
        quota_us = max(1000, int(cores * CFS_PERIOD_US))
        unified = (root / "cgroup.controllers").exists()
        parent = root if unified else root / "cpu"
        if not unified and not (parent / "cpu.cfs_quota_us").exists():
            raise BudgetError(f"no cgroup cpu controller at {root} (cgroup v2) or {parent} (v1): agent.cpu_budget_cores "
                              "cannot be enforced; set the limit on the agent's container instead")
        path = parent / f"tracetap-agent-{pid}"
        try:
            path.mkdir(exist_ok=True)
            if unified:
                (path / "cpu.max").write_text(f"{quota_us} {CFS_PERIOD_US}\n")
            else:
                (path / "cpu.cfs_period_us").write_text(f"{CFS_PERIOD_US}\n")
                (path / "cpu.cfs_quota_us").write_text(f"{quota_us}\n")
            (path / "cgroup.procs").write_text(f"{pid}\n")  # every thread of the process moves with it
        except OSError as exc:
            raise BudgetError(f"cannot set a CPU quota of {cores:g} cores in {path}: {exc}") from exc
        log.info("cpu quota set cores=%g cgroup=%s", cores, path)
        return cls(path, parent)

    def release(self) -> None:
        """Back to the parent cgroup, and the agent's cgroup removed."""
        try:
            (self.parent / "cgroup.procs").write_text(f"{os.getpid()}\n")
            self.path.rmdir()
        except OSError as exc:
            log.warning("cannot remove the agent's cgroup path=%s error=%s", self.path, exc)


@dataclass
class Shedding:
    """The share of flows to capture, adapted once per interval (additive increase, multiplicative decrease):
    down when events were lost, the buffer to Kafka fills, or the agent's CPU nears its budget; back up,
    slowly, while there is room."""

    budget_cores: float | None
    ratio: float = 1.0
    min_ratio: float = 0.001

    def update(self, cpu_cores: float, lost: int, backlog: float) -> float:
        """cpu_cores: the agent's CPU use over the interval; lost: events lost in it (kernel ring buffer and the
        buffer to Kafka); backlog: how full that buffer is (0..1). Returns the new ratio."""
        near_budget = self.budget_cores is not None and cpu_cores >= 0.9 * self.budget_cores
        if lost:
            self.ratio *= 0.5
        elif near_budget or backlog > 0.5:
            self.ratio *= 0.8
        elif (self.budget_cores is None or cpu_cores < 0.7 * self.budget_cores) and backlog < 0.05:
            self.ratio = self.ratio * 1.1 + 0.01
        self.ratio = min(1.0, max(self.min_ratio, self.ratio))
        return self.ratio
