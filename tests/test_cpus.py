"""usable_cores: physical cores of the affinity mask, capped by the cgroup's CPU quota; SpareCores: the CPUs
of the mask that other processes left free."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from coserve import cpus
from coserve.cpus import SpareCores, usable_cores


def _machine(root: Path, cores: list[tuple[int, int]], cgroup: str = "0::/\n") -> tuple[Path, Path]:
    """A /sys and /proc with one (package, core) pair per logical CPU."""
    sys_root, proc_root = root / "sys", root / "proc"
    for cpu, (package, core) in enumerate(cores):
        topology = sys_root / "devices" / "system" / "cpu" / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    (proc_root / "self").mkdir(parents=True)
    (proc_root / "self" / "cgroup").write_text(cgroup)
    (sys_root / "fs" / "cgroup").mkdir(parents=True)
    return sys_root, proc_root


@pytest.fixture
def eight_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))


def test_hyperthreads_count_once(tmp_path: Path, eight_cpus: None) -> None:
    sys_root, proc_root = _machine(tmp_path, [(0, c % 4) for c in range(8)])  # 4 cores x 2 threads
    assert usable_cores(sys_root, proc_root) == 4


def test_only_the_cpus_of_the_affinity_mask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sys_root, proc_root = _machine(tmp_path, [(0, c) for c in range(8)])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2, 5, 6})  # taskset / a cpuset
    assert usable_cores(sys_root, proc_root) == 3


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", 8), ("200000 100000\n", 2), ("150000 100000\n", 1), ("50000 100000\n", 1)],
)
def test_a_cgroup_v2_quota_caps_the_cores_rounded_down(
    tmp_path: Path, eight_cpus: None, cpu_max: str, expected: int
) -> None:
    sys_root, proc_root = _machine(tmp_path, [(0, c) for c in range(8)], cgroup="0::/kubepods/pod1\n")
    (sys_root / "fs" / "cgroup" / "kubepods" / "pod1").mkdir(parents=True)
    (sys_root / "fs" / "cgroup" / "kubepods" / "pod1" / "cpu.max").write_text(cpu_max)
    assert usable_cores(sys_root, proc_root) == expected


def test_a_parent_cgroups_quota_counts_too(tmp_path: Path, eight_cpus: None) -> None:
    sys_root, proc_root = _machine(tmp_path, [(0, c) for c in range(8)], cgroup="0::/a/b\n")
    (sys_root / "fs" / "cgroup" / "a" / "b").mkdir(parents=True)
    (sys_root / "fs" / "cgroup" / "a" / "b" / "cpu.max").write_text("max 100000\n")
    (sys_root / "fs" / "cgroup" / "a" / "cpu.max").write_text("300000 100000\n")
    assert usable_cores(sys_root, proc_root) == 3


def test_a_cgroup_v1_quota(tmp_path: Path, eight_cpus: None) -> None:
    sys_root, proc_root = _machine(tmp_path, [(0, c) for c in range(8)], cgroup="4:cpu,cpuacct:/docker/abc\n")
    folder = sys_root / "fs" / "cgroup" / "cpu,cpuacct"  # inside the container's namespace
    folder.mkdir(parents=True)
    (folder / "cpu.cfs_quota_us").write_text("400000\n")
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    assert usable_cores(sys_root, proc_root) == 4
    (folder / "cpu.cfs_quota_us").write_text("-1\n")  # no quota
    assert usable_cores(sys_root, proc_root) == 8


def test_unreadable_topology_counts_logical_cpus(tmp_path: Path, eight_cpus: None) -> None:
    (tmp_path / "proc" / "self").mkdir(parents=True)  # no /sys, no /proc/self/cgroup
    assert usable_cores(tmp_path / "sys", tmp_path / "proc") == 8


def test_this_machine() -> None:
    assert 1 <= usable_cores() <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("cpu_max", ["", "max\n", "lots 100000\n", "200000 0\n", "-5 100000\n"])
def test_a_cpu_max_that_is_not_a_limit_counts_as_none(tmp_path: Path, eight_cpus: None, cpu_max: str) -> None:
    sys_root, proc_root = _machine(tmp_path, [(0, c) for c in range(8)], cgroup="garbage\n0::/pod\n\n")
    (sys_root / "fs" / "cgroup" / "pod").mkdir(parents=True)
    (sys_root / "fs" / "cgroup" / "pod" / "cpu.max").write_text(cpu_max)
    assert usable_cores(sys_root, proc_root) == 8


def _stat(proc_root: Path, busy: dict[int, int], own: int) -> None:
    """A /proc/stat with each CPU's busy ticks (user) and 1,000 idle ticks, and this process's ticks."""
    lines = ["cpu  0 0 0 0 0 0 0 0 0 0"]  # the machine's total line is not read
    lines += [f"cpu{cpu} {ticks} 0 0 1000 7 0 0 0 0 0" for cpu, ticks in sorted(busy.items())]
    (proc_root / "self").mkdir(parents=True, exist_ok=True)
    (proc_root / "stat").write_text("\n".join(lines) + "\n")
    (proc_root / "self" / "stat").write_text(f"42 (py thon) R {' '.join(['0'] * 10)} {own} 0 0 0\n")


def test_spare_cores_are_the_masks_cpus_others_left_free(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(os, "sysconf", lambda name: 100)
    clock = iter([10.0, 12.0, 14.0, 16.0])
    monkeypatch.setattr(cpus.time, "monotonic", lambda: next(clock))
    _stat(tmp_path, {0: 0, 1: 0, 2: 0}, own=0)
    spare = SpareCores(tmp_path)
    # 2 s: this process used 1.5 CPUs, another 1 CPU's worth (200 ticks), CPU 2 (not ours) was busy throughout
    _stat(tmp_path, {0: 250, 1: 250, 2: 200}, own=300)
    assert spare() == 1
    _stat(tmp_path, {0: 450, 1: 350, 2: 400}, own=600)  # only this process ran on the mask's CPUs
    assert spare() == 2
    _stat(tmp_path, {0: 850, 1: 750, 2: 400}, own=600)  # others held both CPUs
    assert spare() == 0


def test_spare_cores_unknown_without_proc(tmp_path: Path) -> None:
    spare = SpareCores(tmp_path)  # no stat files
    assert spare() is None


def test_spare_cores_on_this_machine_sees_a_busy_cpu() -> None:
    mask = sorted(os.sched_getaffinity(0))
    spare = SpareCores()
    burner = subprocess.Popen(["taskset", "-c", str(mask[-1]), "sh", "-c", "while :; do :; done"])
    try:
        time.sleep(1.5)
        spare()  # the interval since construction includes the burner's start
        time.sleep(1.0)
        free = spare()
    finally:
        burner.kill()
        burner.wait()
    assert free is not None and 0 <= free <= len(mask) - 1
