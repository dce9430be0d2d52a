"""The exact Flower commands of a real CalibSeg federation (SuperLink, SuperNodes, ``flwr run``).

A :class:`DeploymentPlan` turns "where is the SuperLink, where are the credentials, which
sites exist" into the command lines each party runs, for the installed Flower version:

* the coordinator starts ``flower-superlink`` (TLS, SuperNode authentication),
* registers each site's public key under the site's name (``flwr supernode register``),
* each site starts ``flower-supernode`` with its private key, the CA certificate and its
  cohort in ``--node-config``,
* the coordinator submits a task with ``flwr run <app> <connection> --run-config ...``.

The Flower app that ``flwr run`` bundles is :data:`APP_DIR` (settings only; the
ServerApp and ClientApp are :mod:`CalibSegLib.federated.app`, installed everywhere).
:mod:`CalibSegLib.federated.local` runs the same commands as local processes.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from CalibSegLib.errors import CalibSegError
from CalibSegLib.federated.sites import SiteSpec

#: The Flower app folder ``flwr run`` bundles (its ``pyproject.toml`` names the components).
APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibseg-app")

#: Name of the SuperLink connection in the Flower configuration (``$FLWR_HOME/config.toml``).
CONNECTION = "calibseg"

#: Run config keys the app understands (the ``[tool.flwr.app.config]`` of :data:`APP_DIR`).
RUN_CONFIG_KEYS = ("task", "model", "output", "min-sites", "sites", "timeout", "n-bins",
                   "rounds", "local-steps", "lr", "drift-threshold", "overwrite")


def _toml_value(key: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value)
    if "'" in text or "\n" in text:
        raise CalibSegError(f"{key}: the value {text!r} holds a quote or line break; "
                            "rename the folder or site.")
    return f"'{text}'"


def config_string(values: Mapping[str, object]) -> str:
    """``k='v' n=2`` — the form ``--node-config`` and ``--run-config`` read."""
    return " ".join(f"{k}={_toml_value(k, v)}" for k, v in values.items())


def bin_path(program: str) -> str:
    """``program`` from this Python's environment (the venv's ``bin/``), else the bare name."""
    path = os.path.join(os.path.dirname(sys.executable), program)
    return path if os.path.exists(path) else program


def flwr_config_toml(address: str, ca_certificate: str, connection: str = CONNECTION) -> str:
    """The ``$FLWR_HOME/config.toml`` text that makes ``connection`` point at the SuperLink."""
    return (f'[superlink]\ndefault = "{connection}"\n\n[superlink.{connection}]\n'
            f'address = "{address}"\nroot-certificates = "{os.path.abspath(ca_certificate)}"\n')


@dataclass(frozen=True)
class SiteDeployment:
    """One site: its cohort (node config) and its authentication key pair."""

    spec: SiteSpec
    private_key: str
    public_key: str


@dataclass
class DeploymentPlan:
    """Addresses, credentials and sites of a federation; builds every command line.

    Parameters
    ----------
    host, port
        Where SuperNodes and ``flwr`` reach the SuperLink (a name in its certificate).
    credentials
        Folder holding ``ca.crt``, ``server.pem``, ``server.key``
        (:func:`~CalibSegLib.federated.credentials.create_certificates`).
    sites
        The sites with their key files.
    database
        The SuperLink's state file (registered nodes survive a restart).
    """

    host: str
    port: int
    credentials: str
    sites: Sequence[SiteDeployment] = field(default_factory=list)
    database: str = "state.db"
    connection: str = CONNECTION
    app_dir: str = APP_DIR

    @property
    def address(self) -> str:
        """``host:port`` of the SuperLink (an IPv6 host in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{int(self.port)}"

    @property
    def ca_certificate(self) -> str:
        """Path of the certificate authority's certificate the sites trust."""
        return os.path.join(self.credentials, "ca.crt")

    def superlink_command(self, bind_host: str | None = None) -> list[str]:
        """The coordinator's ``flower-superlink`` (TLS on, SuperNode authentication on)."""
        return [bin_path("flower-superlink"),
                "--ssl-ca-certfile", self.ca_certificate,
                "--ssl-certfile", os.path.join(self.credentials, "server.pem"),
                "--ssl-keyfile", os.path.join(self.credentials, "server.key"),
                "--enable-supernode-auth", "--database", self.database,
                "--host", bind_host or self.host, "--port", str(int(self.port)),
                "--disable-runtime-dependency-installation"]

    def register_command(self, site: SiteDeployment) -> list[str]:
        """Register a site's public key under its name (run by the coordinator)."""
        return [bin_path("flwr"), "supernode", "register", site.public_key, self.connection,
                "--name", site.spec.name, "--format", "json"]

    def supernode_command(self, site: SiteDeployment, runtime_port: int | None = None,
                          node_config: Mapping[str, object] | None = None,
                          max_wait_s: float | None = None) -> list[str]:
        """The site's ``flower-supernode`` (its key, the CA, its cohort in the node config).

        ``runtime_port`` is the SuperNode's local Runtime API port (Flower's default
        9094; sites sharing one machine need distinct ports); ``max_wait_s`` makes it
        give up when the SuperLink cannot be reached for that long.
        """
        command = [bin_path("flower-supernode"), "--superlink", self.address,
                   "--root-certificates", self.ca_certificate,
                   "--auth-supernode-private-key", site.private_key,
                   "--node-config", config_string(node_config or site.spec.node_config())]
        if runtime_port is not None:
            command += ["--host", "127.0.0.1", "--port", str(int(runtime_port))]
        if max_wait_s is not None:
            command += ["--max-wait-time", f"{float(max_wait_s):g}"]
        return command

    def run_command(self, run_config: Mapping[str, object], *, stream: bool = False,
                    json: bool = False) -> list[str]:
        """``flwr run`` of the CalibSeg app (``run_config`` keys: :data:`RUN_CONFIG_KEYS`)."""
        unknown = sorted(set(run_config) - set(RUN_CONFIG_KEYS))
        if unknown:
            raise CalibSegError(f"Unknown run config key(s) {unknown}; the app reads "
                                f"{', '.join(RUN_CONFIG_KEYS)}.")
        command = [bin_path("flwr"), "run", self.app_dir, self.connection,
                   "--run-config", config_string(run_config)]
        if stream:
            command.append("--stream")
        if json:
            command += ["--format", "json"]
        return command

    def script(self, run_config: Mapping[str, object]) -> str:
        """The whole recipe as shell lines, one section per machine."""
        def quote(word: str) -> str:
            if "'" in word and not any(c in word for c in '"$`\\!'):
                return f'"{word}"'  # config strings: key='value' pairs, readable in quotes
            return shlex.quote(word)

        def line(command: Sequence[str]) -> str:
            return " ".join(quote(os.path.basename(c) if i == 0 else c)
                            for i, c in enumerate(command))

        out = ["# coordinator: Flower connection (in $FLWR_HOME/config.toml, default ~/.flwr)",
               *(f"#   {t}" for t in flwr_config_toml(self.address, self.ca_certificate,
                                                       self.connection).splitlines() if t),
               "# coordinator: the SuperLink (listens on every interface, port "
               f"{int(self.port)})",
               line(self.superlink_command(bind_host="0.0.0.0")),
               "# coordinator: register each site's public key under its name"]
        out += [line(self.register_command(s)[:-2]) for s in self.sites]
        for s in self.sites:
            key = os.path.basename(s.private_key)
            out += [f"# site {s.spec.name} (gets ca.crt and its own {key})",
                    line(self.supernode_command(s))]
        out += ["# coordinator: run a task", line(self.run_command(run_config, stream=True))]
        return "\n".join(out) + "\n"
