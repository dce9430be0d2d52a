"""An in-process Flower grid: the ServerApp talks to N ClientApps in this process.

:class:`LoopbackGrid` implements Flower's :class:`~flwr.serverapp.Grid` interface
(``push_messages`` / ``pull_messages`` / ``send_and_receive``). Each message is
handed to the site's :class:`~flwr.clientapp.ClientApp` with that site's
:class:`~flwr.app.Context`, exactly as a SuperNode would, and both directions go
through Flower's protobuf encoding of a ``RecordDict``. What the server reads is
therefore what it would read from the wire, and the encoded size is recorded.

It is the engine for tests and demos: deterministic (sites answer in node order),
no extra processes, starts in milliseconds. It can also inject faults a real
federation has — a site whose reply is lost (drop-out mid-round), a site whose
ClientApp raises, a site that sends a tampered payload — so the server's handling
of them is testable. Real sites use Flower's deployment engine instead
(``docs/federated.md``); the ServerApp and ClientApp code is the same.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flwr.app import Context, Error, Message, RecordDict, UserConfigValue
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

LOG = logging.getLogger("CalibSegLib.federated")

#: The node id Flower gives the server side (the SuperLink).
SERVER_NODE_ID = 1

#: Error code Flower uses for "the ClientApp raised an exception".
CLIENT_APP_RAISED_EXCEPTION = 2

#: What a fault does to a site's reply: ``"drop"`` (the reply never arrives, as when the
#: site goes offline mid-round) or a function that rewrites the reply content.
Fault = str | Callable[[RecordDict], RecordDict]


@dataclass
class WireRecord:
    """One reply as it reached the server (after the protobuf round trip)."""

    node_id: int
    site: str
    message_type: str
    nbytes: int
    content: RecordDict | None
    error: str | None = None


def _wire(content: RecordDict) -> tuple[RecordDict, int]:
    """Encode ``content`` the way Flower does on the wire and decode it again."""
    from flwr.common.serde import recorddict_from_proto, recorddict_to_proto

    blob = recorddict_to_proto(content).SerializeToString()
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict  # noqa: N811

    proto = ProtoRecordDict()
    proto.ParseFromString(blob)
    return recorddict_from_proto(proto), len(blob)


@dataclass
class LoopbackGrid(Grid):
    """A Flower grid whose nodes are ClientApps in this process.

    Parameters
    ----------
    client_app
        The ClientApp every node runs (the same object a SuperNode would load).
    node_configs
        One node config per site (what ``flower-supernode --node-config`` sets);
        each must hold ``"site"`` (the site's name).
    run_config
        The run config every context sees.
    faults
        Site name -> :data:`Fault`, applied to every reply of that site.
    """

    client_app: ClientApp
    node_configs: Sequence[Mapping[str, UserConfigValue]]
    run_config: Mapping[str, UserConfigValue] = field(default_factory=dict)
    faults: Mapping[str, Fault] = field(default_factory=dict)
    run_id: int = 1
    received: list[WireRecord] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        self._run = Run.create_empty(self.run_id)
        self._contexts: dict[int, Context] = {}
        self.site_of: dict[int, str] = {}
        for n, config in enumerate(self.node_configs):
            node_id = 101 + n
            name = str(config["site"])
            self.site_of[node_id] = name
            self._contexts[node_id] = Context(
                run_id=self.run_id, node_id=node_id, node_config=dict(config),
                state=RecordDict(), run_config=dict(self.run_config),
            )
        self._replies: dict[str, Message] = {}
        # The server process's identity, as Flower's ServerApp runner sets it; messages
        # created on the server side take their run and source node from it.
        TaskIdentity.task_id = 1
        TaskIdentity.run_id = self.run_id
        TaskIdentity.node_id = SERVER_NODE_ID

    # --- Grid interface ----------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        """Use ``run`` as the grid's run (Flower's ServerApp runner sets it)."""
        self._run = run

    @property
    def run(self) -> Run:
        """The grid's run."""
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """A message from the server to ``dst_node_id``."""
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> list[int]:
        """The node ids of the in-process sites, sorted."""
        return sorted(self._contexts)

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        """Deliver each message to its node now; keep the reply for :meth:`pull_messages`."""
        ids = []
        for message in sorted(messages, key=lambda m: m.metadata.dst_node_id):
            # Flower's own in-memory grid stamps ids the same way.
            message.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            ids.append(message.metadata.message_id)
            reply = self._deliver(message)
            if reply is not None:
                self._replies[message.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Message]:
        """The replies kept for ``message_ids`` that arrived (each is returned once)."""
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> list[Message]:
        """Push, then pull every reply that arrived (lost replies are simply missing)."""
        return self.pull_messages(self.push_messages(messages))

    # --- delivery ------------------------------------------------------------------------------
    def _deliver(self, message: Message) -> Message | None:
        node_id = message.metadata.dst_node_id
        context = self._contexts.get(node_id)
        if context is None:
            return None
        site = self.site_of[node_id]
        content, _ = _wire(message.content)
        inbound = Message(content, node_id, message.metadata.message_type,
                          group_id=message.metadata.group_id)
        inbound.metadata.__dict__["_message_id"] = message.metadata.message_id
        try:
            reply = self.client_app(inbound, context)
            body: RecordDict | None = reply.content if reply.has_content() else None
            error = reply.error.reason if reply.has_error() else None
        except Exception as exc:  # a SuperNode turns ClientApp exceptions into error replies
            LOG.debug("site %s raised:\n%s", site, traceback.format_exc())
            body, error = None, f"{type(exc).__name__}: {exc}"
        fault = self.faults.get(site)
        if fault == "drop":
            LOG.info("site %s: reply lost (simulated drop-out)", site)
            return None
        if callable(fault) and body is not None:
            body = fault(body)
        if body is not None:
            body, nbytes = _wire(body)
            out = Message(body, reply_to=message)
        else:
            nbytes = 0
            out = Message(Error(CLIENT_APP_RAISED_EXCEPTION, error or "no content"),
                          reply_to=message)
        self.received.append(WireRecord(node_id, site, message.metadata.message_type,
                                        nbytes, body, error))
        return out
