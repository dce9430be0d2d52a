"""A real Flower federation on this machine: one SuperLink and one SuperNode per site.

:class:`LocalFederation` runs the commands of a :class:`~CalibSegLib.federated.deployment.
DeploymentPlan` as local processes on ``127.0.0.1`` with free ports: TLS with freshly made
certificates, SuperNode authentication with one registered key per site, each SuperNode
reading its cohort from its node config, tasks submitted with ``flwr run``. It is what a
first look (``calibseg federated local``) and the deployment tests use; every wait has a
time-out that names what did not answer, and :meth:`LocalFederation.close` stops every
process it started (also its children), whatever happened.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated.credentials import create_certificates, create_supernode_keys
from CalibSegLib.federated.deployment import (
    DeploymentPlan,
    SiteDeployment,
    bin_path,
    flwr_config_toml,
)
from CalibSegLib.federated.sites import SiteSpec

LOG = logging.getLogger("CalibSegLib.federated")

#: Run states ``flwr ls`` reports for a run that ended.
FINISHED = "finished:"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _start_time(pid: int) -> str | None:
    """The process's start time (``/proc/<pid>/stat`` field 22): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _processes_below(pid: int) -> list[tuple[int, str | None]]:
    """``pid`` and every process below it, each with its start time."""
    return [(p, _start_time(p)) for p in (pid, *_descendants(pid))]


def _signal(processes: Sequence[tuple[int, str | None]], sig: int) -> None:
    """Signal each process that is still the one recorded (never a reused pid)."""
    for pid, started in processes:
        if started is not None and _start_time(pid) != started:
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class RunResult:
    """One ``flwr run`` as the SuperLink reports it."""

    run_id: int
    status: str
    details: str
    seconds: float
    inbound_bytes: int
    outbound_bytes: int
    log: str = ""

    @property
    def ok(self) -> bool:
        """Whether Flower reports the run as completed."""
        return self.status == "finished:completed"


@dataclass
class LocalFederation:
    """SuperLink + one SuperNode per site on 127.0.0.1 (use as a context manager).

    Parameters
    ----------
    workdir
        Credentials, Flower's home folder (``FLWR_HOME``), the SuperLink state and one
        log file per process go here.
    sites
        The sites; each SuperNode's node config is its :meth:`SiteSpec.node_config`.
    timeout
        Seconds any single wait may take (SuperLink up, SuperNodes online, a run).
    log_level
        Flower's console log level in the started processes (``FLWR_LOG_LEVEL``).
    """

    workdir: str
    sites: Sequence[SiteSpec]
    timeout: float = 120.0
    log_level: str = "INFO"
    plan: DeploymentPlan = field(init=False)
    node_ids: dict[str, int] = field(default_factory=dict, init=False)
    _processes: dict[str, subprocess.Popen] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.workdir = os.path.abspath(self.workdir)
        names = [s.name for s in self.sites]
        if not names or len(set(names)) != len(names):
            raise CalibSegError("A local federation needs at least one site and distinct names.")
        self.flwr_home = os.path.join(self.workdir, "flwr-home")
        self.logs = os.path.join(self.workdir, "logs")

    # --- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> LocalFederation:
        """Credentials, SuperLink, registration of every site, SuperNodes online."""
        for folder in (self.workdir, self.flwr_home, self.logs):
            os.makedirs(folder, exist_ok=True)
        credentials = os.path.join(self.workdir, "credentials")
        create_certificates(credentials, overwrite=True)
        keys = create_supernode_keys(os.path.join(self.workdir, "keys"),
                                     [s.name for s in self.sites], overwrite=True)
        self.plan = DeploymentPlan(
            host="127.0.0.1", port=free_port(), credentials=credentials,
            sites=[SiteDeployment(s, k.private_key, k.public_key)
                   for s, k in zip(self.sites, keys)],
            database=os.path.join(self.workdir, "state.db"))
        with open(os.path.join(self.flwr_home, "config.toml"), "w", encoding="utf-8") as fh:
            fh.write(flwr_config_toml(self.plan.address, self.plan.ca_certificate,
                                      self.plan.connection))
        self._spawn("superlink", self.plan.superlink_command())
        self._wait(lambda: self._nodes() is not None, "the SuperLink to accept connections",
                   watch=["superlink"])
        for site in self.plan.sites:
            self.node_ids[site.spec.name] = self._register(site)
        for site in self.plan.sites:
            self.start_site(site.spec.name)
        self.wait_online(list(self.node_ids))
        return self

    def add_site(self, spec: SiteSpec, *, register: bool = True) -> SiteDeployment:
        """A further site with its own key pair; registered with the SuperLink unless told."""
        if any(s.spec.name == spec.name for s in self.plan.sites):
            raise ValueError(f"site {spec.name} is already part of this federation")
        (keys,) = create_supernode_keys(os.path.join(self.workdir, "keys"), [spec.name],
                                        overwrite=True)
        site = SiteDeployment(spec, keys.private_key, keys.public_key)
        self.plan.sites = [*self.plan.sites, site]
        if register:
            self.node_ids[spec.name] = self._register(site)
        return site

    def close(self) -> None:
        """Stop every process started here and everything below them (TERM, then KILL)."""
        tree = {name: _processes_below(p.pid) for name, p in self._processes.items()}
        for name, proc in self._processes.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
            _signal(tree[name][1:], signal.SIGTERM)
        end = time.monotonic() + 10.0
        for proc in self._processes.values():
            try:
                proc.wait(timeout=max(0.1, end - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for pids in tree.values():
            _signal(pids, signal.SIGKILL)
        for proc in self._processes.values():
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:  # pragma: no cover - KILL cannot be refused
                LOG.warning("process %d did not end", proc.pid)
        self._processes.clear()

    # --- sites -------------------------------------------------------------------------------
    def site(self, name: str) -> SiteDeployment:
        """The deployment of the site called ``name``."""
        for site in self.plan.sites:
            if site.spec.name == name:
                return site
        raise KeyError(f"no site named {name!r} in this federation")

    def start_site(self, name: str, *, credentials: str | None = None,
                   max_wait_s: float | None = None) -> subprocess.Popen:
        """Start the SuperNode of site ``name``.

        ``credentials``: another folder whose ``ca.crt`` the site trusts instead of the
        federation's; ``max_wait_s``: let it give up when it cannot connect that long.
        """
        site = self.site(name)
        plan = self.plan
        if credentials is not None:
            plan = replace(plan, credentials=credentials)
        command = plan.supernode_command(site, runtime_port=free_port(),
                                         node_config=site.spec.node_config(),
                                         max_wait_s=max_wait_s)
        return self._spawn(f"supernode-{name}", command)

    def stop_site(self, name: str) -> None:
        """Kill site ``name``'s SuperNode at once (as when a hospital's machine goes down)."""
        proc = self._processes.get(f"supernode-{name}")
        if proc is None:
            raise RuntimeError(f"site {name} has no running SuperNode")
        _signal(_processes_below(proc.pid), signal.SIGKILL)
        proc.wait(timeout=10.0)

    def wait_online(self, names: Sequence[str], timeout: float | None = None) -> None:
        """Wait until the SuperLink reports the named sites online; names the missing ones."""
        want = {self.node_ids[n]: n for n in names}

        def online() -> bool:
            nodes = self._nodes() or {}
            return all(nodes.get(i) == "online" for i in want)

        def missing() -> str:
            nodes = self._nodes() or {}
            return ", ".join(f"{n} ({nodes.get(i, 'unknown')})" for i, n in want.items()
                             if nodes.get(i) != "online")

        self._wait(online, "the SuperNodes to come online", timeout=timeout,
                   watch=["superlink", *(f"supernode-{n}" for n in names)], detail=missing)

    # --- runs --------------------------------------------------------------------------------
    def run(self, run_config: Mapping[str, object], timeout: float | None = None) -> RunResult:
        """Submit the CalibSeg app with ``run_config`` and wait for the run to end."""
        return self.wait_run(self.submit(run_config), timeout)

    def submit(self, run_config: Mapping[str, object]) -> int:
        """``flwr run`` of the CalibSeg app with ``run_config``; returns the run id."""
        return int(self._flwr(self.plan.run_command(run_config, json=True))["run-id"])

    def wait_run(self, run_id: int, timeout: float | None = None) -> RunResult:
        """Wait until run ``run_id`` ended (stopped on time-out); its status, traffic and log."""
        state: dict = {}

        def finished() -> bool:
            state.update(self._run_info(run_id))
            return str(state.get("status", "")).startswith(FINISHED)

        try:
            self._wait(finished, f"run {run_id} to finish", timeout=timeout,
                       watch=["superlink"], detail=lambda: str(state.get("status", "unknown")))
        except CalibSegError:
            self._flwr([bin_path("flwr"), "stop", str(run_id), self.plan.connection,
                        "--format", "json"], check=False)
            raise
        traffic = state.get("network-traffic", {})
        return RunResult(run_id, str(state["status"]), str(state.get("status-details", "")),
                         float(state.get("elapsed", 0.0)), int(traffic.get("inbound-bytes", 0)),
                         int(traffic.get("outbound-bytes", 0)), self.run_log(run_id))

    def run_log(self, run_id: int) -> str:
        """The run's log as the SuperLink kept it (``flwr log --show``)."""
        try:
            proc = subprocess.run([bin_path("flwr"), "log", str(run_id),
                                   self.plan.connection, "--show"], env=self._env(),
                                  capture_output=True, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            return ""
        return proc.stdout

    def process_log(self, name: str) -> str:
        """What process ``name`` (``superlink``, ``supernode-<site>``) printed so far."""
        path = os.path.join(self.logs, f"{name}.log")
        if not os.path.exists(path):
            return ""
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()

    # --- helpers -----------------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        bin_dir = os.path.dirname(self.plan.superlink_command()[0])
        env.update({"FLWR_HOME": self.flwr_home, "FLWR_DISABLE_UPDATE_CHECK": "1",
                    "FLWR_TELEMETRY_ENABLED": "0", "FLWR_LOG_LEVEL": self.log_level,
                    "PYTHONUNBUFFERED": "1", "NO_COLOR": "1",
                    "PATH": os.pathsep.join(p for p in (bin_dir, env.get("PATH", "")) if p)})
        return env

    def _spawn(self, name: str, command: Sequence[str]) -> subprocess.Popen:
        old = self._processes.get(name)
        if old is not None and old.poll() is None:
            raise RuntimeError(f"{name} is already running")
        log = open(os.path.join(self.logs, f"{name}.log"), "ab")  # noqa: SIM115
        try:
            proc = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=self._env(),
                                    cwd=self.workdir, start_new_session=True)
        finally:
            log.close()
        self._processes[name] = proc
        return proc

    def _flwr(self, command: Sequence[str], check: bool = True) -> dict:
        try:
            proc = subprocess.run(list(command), env=self._env(), capture_output=True,
                                  text=True, timeout=self.timeout, cwd=self.workdir)
        except subprocess.TimeoutExpired as exc:
            if not check:
                return {}
            raise CalibSegError(f"{os.path.basename(command[0])} {command[1]} did not answer "
                                f"within {self.timeout:g} s.") from exc
        start = proc.stdout.find("{")
        try:
            data = json.loads(proc.stdout[start:]) if start >= 0 else {}
        except json.JSONDecodeError:
            data = {}
        if check and (proc.returncode != 0 or not data.get("success", False)):
            why = (data.get("error-message") or proc.stderr.strip() or proc.stdout.strip()
                   or f"exit code {proc.returncode}")
            raise CalibSegError(f"{os.path.basename(command[0])} {command[1]} failed: "
                                f"{why.splitlines()[-1] if why else why}")
        return data

    def _nodes(self) -> dict[int, str] | None:
        """Node id -> status as the SuperLink lists them, or None when it does not answer."""
        try:
            data = self._flwr([bin_path("flwr"), "supernode", "list",
                               self.plan.connection, "--format", "json"])
        except CalibSegError:
            return None
        return {int(n["node-id"]): str(n["status"]) for n in data.get("nodes", [])}

    def _register(self, site: SiteDeployment) -> int:
        data = self._flwr(self.plan.register_command(site))
        return int(data["node-id"])

    def _run_info(self, run_id: int) -> dict:
        data = self._flwr([bin_path("flwr"), "ls", self.plan.connection,
                           "--run-id", str(run_id), "--format", "json"], check=False)
        runs = data.get("runs") or [{}]
        return runs[0]

    def _wait(self, done: Callable[[], bool], what: str, *, timeout: float | None = None,
              watch: Sequence[str] = (), detail: Callable[[], str] | None = None) -> None:
        """Poll ``done`` until true; fail at once when a watched process exits."""
        limit = self.timeout if timeout is None else float(timeout)
        end = time.monotonic() + limit
        while True:
            if done():
                return
            for name in watch:
                proc = self._processes.get(name)
                if proc is not None and proc.poll() is not None:
                    tail = self.process_log(name).strip().splitlines()[-3:]
                    raise CalibSegError(f"{name} exited (code {proc.returncode}) while waiting "
                                        f"for {what}: {' | '.join(tail)}")
            if time.monotonic() > end:
                extra = f" ({detail()})" if detail else ""
                raise CalibSegError(f"Timed out after {limit:g} s waiting for {what}{extra}.")
            time.sleep(0.5)
