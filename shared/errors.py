"""The one exception tree: `MeshrtcError` at the root, one subclass per layer (docs/errors.md).

Every exception meshrtc defines derives from exactly one layer below, so a caller can catch "any
bus failure" or "anything meshrtc raised" without listing classes, and a log line's class says
where it came from. Classes that were a `ValueError`, `RuntimeError`, `TimeoutError` or `OSError`
before the tree existed keep that as a second base, so the `except` clauses written against the
builtin still catch them. This module imports nothing, so every module can import it.
"""

from __future__ import annotations


class MeshrtcError(Exception):
    """Root of every exception meshrtc defines."""


class ContractError(MeshrtcError):
    """Bytes that do not decode to a shared contract (event, control message, relay datagram):
    bad input from a client or a peer, rejected without side effects."""


class ConfigurationError(MeshrtcError):
    """The operator's configuration or environment cannot be used; raised at startup."""


class AccessError(MeshrtcError):
    """Authentication or authorization refused (a token, a signature, a grant): a client error."""


class BusError(MeshrtcError):
    """The message bus (NATS) did not carry a message or an answer."""


class StoreError(MeshrtcError):
    """The SQL database could not be used."""


class MediaError(MeshrtcError):
    """The media node: a peer connection, ICE, or a command it cannot carry out."""


class SignalError(MeshrtcError):
    """The signal service: a request it answers with an HTTP error status."""


class RelayError(MeshrtcError):
    """The relay: a datagram or probe from another relay that it cannot use."""


class RoomError(MeshrtcError):
    """The room service: its API's answer to a bad call, a webhook receiver refusing."""


class BillingError(MeshrtcError):
    """Billing: a usage query that cannot be answered."""


class ToolError(MeshrtcError):
    """The `meshrtc` command line and the failover lab: one line for the operator."""
