"""Fixtures of the workflow tests: Snakemake in a temporary working directory, and a throwaway
single-node SLURM cluster (Debian's packages, one fake GPU) for the SLURM profile.

Every run uses the repository's Snakefile with ``--directory`` pointing to a temporary folder, so
the tests never touch the repository's results/ or logs/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SNAKEFILE = REPO / "workflow" / "Snakefile"
TINY = REPO / "config" / "tiny.yaml"
SLURM_PROFILE = REPO / "workflow" / "profiles" / "slurm"

SLURM_CONF = Path("/etc/slurm/slurm.conf")
GRES_CONF = Path("/etc/slurm/gres.conf")
MARKER = "# throwaway test cluster of unetpipe's tests/workflow/conftest.py"
SLURM_PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]


def snakemake(
    workdir: Path, *args: str, configfile: Path = TINY, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run the workflow with working directory ``workdir``, killed after ``timeout`` seconds."""
    cmd = ["timeout", "-k", "30", str(timeout), sys.executable, "-m", "snakemake"]
    cmd += ["-s", str(SNAKEFILE), "--configfile", str(configfile), "--directory", str(workdir)]
    return subprocess.run([*cmd, *args], cwd=workdir, capture_output=True, text=True)


def check(result: subprocess.CompletedProcess) -> str:
    """The run's combined output; fails the test with its tail when the run failed."""
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"exit {result.returncode}:\n{output[-6000:]}"
    return output


def scheduled_rules(workdir: Path, *args: str, configfile: Path = TINY) -> set[str]:
    """Rules that a dry run (``snakemake -n``) would run, e.g. after a config change."""
    output = check(snakemake(workdir, *args, "-n", "--quiet", "rules", configfile=configfile))
    rules = set()
    for line in output.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].isdigit() and fields[0] not in ("job", "total"):
            rules.add(fields[0])
    return rules


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory holding one complete run of the tiny pipeline on 2 cores."""
    workdir = tmp_path_factory.mktemp("tiny")
    check(snakemake(workdir, "--cores", "2"))
    return workdir


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def _install_slurm() -> None:
    """Install Debian's SLURM and munge (as root), or skip the test with the reason."""
    if all(shutil.which(tool) for tool in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if shutil.which("apt-get") is None:
        pytest.skip("SLURM is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *SLURM_PACKAGES],
    ):
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if result.returncode != 0:
            pytest.skip(f"cannot install SLURM ({' '.join(cmd)}): {result.stderr[-500:]}")


# CPUs the test node declares (slurmd believes the config, not the hardware: config_overrides):
# the predict rule's job and its Dask worker jobs (predict.scheduler: slurm) must run at once.
NODE_CPUS = 8


def _slurm_conf(state: Path) -> str:
    cpus = max(os.cpu_count() or 1, NODE_CPUS)
    mem_total_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal:")
    )
    return f"""{MARKER}
ClusterName=unetpipe-test
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
SlurmdParameters=config_overrides
StateSaveLocation={state}/state
SlurmdSpoolDir={state}/spool
SlurmctldPidFile={state}/slurmctld.pid
SlurmdPidFile={state}/slurmd.pid
SlurmctldLogFile={state}/slurmctld.log
SlurmdLogFile={state}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
MinJobAge=300
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={state}/jobcomp.txt
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_total_kb * 8 // 10240} \
Gres=gpu:fake:1 State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
"""


def _wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.5)


def _node_idle() -> bool:
    return set(_run(["sinfo", "-h", "-o", "%t"]).stdout.split()) == {"idle"}


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A running single-node cluster: partitions ``cpu`` (default) and ``gpu``, one fake GPU.

    Yields the folder of its state and logs. The daemons are stopped by pid and the config files
    removed at the end, whatever happened.
    """
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (apt-get install, /etc/slurm/slurm.conf)")
    for conf in (SLURM_CONF, GRES_CONF):
        if conf.exists() and MARKER not in conf.read_text():
            pytest.skip(f"{conf} exists: not replacing the configuration of a real cluster")
    _install_slurm()
    state = tmp_path_factory.mktemp("slurm")
    daemons: list[subprocess.Popen] = []
    try:
        # munge: the authentication every SLURM command uses; an already running one is shared.
        if _run(["munge", "-n"]).returncode != 0:
            run_dir = Path("/run/munge")
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(run_dir, "munge", "munge")
            daemons.append(_daemon(["munged", "-F"], state / "munged.out", user="munge"))
            _wait_for(lambda: _run(["munge", "-n"]).returncode == 0, "munged")
        # The config must be at the default path: the plugin's job step drops SLURM_CONF.
        SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SLURM_CONF.write_text(_slurm_conf(state))
        GRES_CONF.write_text(f"{MARKER}\nNodeName=localhost Name=gpu Type=fake File=/dev/null\n")
        for sub in ("state", "spool"):
            (state / sub).mkdir()
        daemons.append(_daemon(["slurmctld", "-D"], state / "slurmctld.out"))
        daemons.append(_daemon(["slurmd", "-D", "-N", "localhost"], state / "slurmd.out"))
        _wait_for(_node_idle, "the SLURM node to become idle")
        yield state
    finally:
        if daemons and shutil.which("squeue"):
            jobs = _run(["squeue", "-h", "-o", "%i"]).stdout.split()
            if jobs:
                _run(["scancel", *jobs])
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(timeout=20)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        for conf in (SLURM_CONF, GRES_CONF):
            if conf.exists() and MARKER in conf.read_text():
                conf.unlink()


def _daemon(cmd: list[str], out: Path, user: str | None = None) -> subprocess.Popen:
    """Start a daemon in the foreground, its output in ``out``; fail if it exits at once."""
    with open(out, "w") as stream:
        proc = subprocess.Popen(
            cmd, stdout=stream, stderr=subprocess.STDOUT, user=user, group=user, cwd="/"
        )
    time.sleep(0.3)
    if proc.poll() is not None:
        raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {out.read_text()[-2000:]}")
    return proc
