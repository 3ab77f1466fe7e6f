"""SIP transactions: RFC 3261 §17 with the Accepted states of RFC 6026, sans-IO.

The rules, in one place (the machines live in :mod:`._client_txn` and
:mod:`._server_txn`, the shared timer heap in :mod:`._txn_core`):

- A transaction is one request and every response to it. Four machines exist: INVITE client
  (CALLING, PROCEEDING, COMPLETED, ACCEPTED), non-INVITE client (TRYING, PROCEEDING,
  COMPLETED), INVITE server (PROCEEDING, COMPLETED, CONFIRMED, ACCEPTED) and non-INVITE server
  (TRYING, PROCEEDING, COMPLETED). All end in TERMINATED, where the layer forgets them at once.
- Time is an argument. Timers are entries in one heap, read with :meth:`next_deadline` and fired
  by :meth:`TransactionLayer.handle_timer`. Outputs are pulled: bytes with
  :meth:`datagrams_to_send`, events for the TU with :meth:`next_event`.
- On unreliable transports the layer retransmits: requests (Timer A doubling without cap,
  Timer E doubling up to T2 and at T2 in PROCEEDING), non-2xx finals (Timer G doubling up to
  T2) and, in ACCEPTED, 2xx finals (T1 doubling up to T2, §13.3.1.4; RFC 3261 leaves that to
  the UAS core, we do it here so every TU gets it). On reliable transports nothing is
  retransmitted and the wait timers D, I, J, K are zero: the transaction ends at once.
- A 2xx to an INVITE does not end the transaction (RFC 6026): both sides enter ACCEPTED for
  64*T1 (Timers L and M) to absorb retransmissions. The ACK of a 2xx is a new transaction on
  the wire (new branch); it is matched to the INVITE server transaction by (Call-ID, CSeq
  number, From tag, To tag of the 2xx) in a second index and reported as :class:`AckForInvite`.
- Requests match by (branch, sent-by, method) with ACK matching the INVITE (§17.2.3); requests
  whose branch lacks the ``z9hG4bK`` cookie fall back to the RFC 2543 comparison. Responses
  match by (branch, CSeq method), so an INVITE and its CANCEL are two transactions (§17.1.3).
- Misuse (a second final response, a response in the wrong state) raises
  :class:`~.errors.LocalProtocolError`; nothing the network sends can make this module raise
  anything but the parse errors of the message accessors.
"""

from __future__ import annotations

from typing import TypeAlias

from ._client_txn import (
    ClientSide,
    ClientTransaction,
    ResponseReceived,
    build_ack,
    build_cancel,
)
from ._server_txn import (
    AckForInvite,
    NewTransaction,
    RequestOutcome,
    Retransmission,
    ServerSide,
    ServerTransaction,
    StrayAck,
)
from ._txn_core import (
    TimerConfig,
    Transaction,
    TransactionState,
    TransactionTerminated,
    TransactionTimeout,
)

__all__ = [
    "AckForInvite",
    "ClientTransaction",
    "NewTransaction",
    "RequestOutcome",
    "ResponseReceived",
    "Retransmission",
    "ServerTransaction",
    "StrayAck",
    "TimerConfig",
    "Transaction",
    "TransactionEvent",
    "TransactionLayer",
    "TransactionState",
    "TransactionTerminated",
    "TransactionTimeout",
    "build_ack",
    "build_cancel",
]

TransactionEvent: TypeAlias = ResponseReceived | TransactionTimeout | TransactionTerminated


class TransactionLayer(ServerSide, ClientSide):
    """Every transaction of one SIP endpoint, their indexes and their timers.

    One object, as in aioquic: feed it messages and the time (:meth:`receive_request`,
    :meth:`receive_response`, :meth:`create_client`, :meth:`respond`,
    :meth:`handle_timer`), then pull what it produced (:meth:`datagrams_to_send`,
    :meth:`next_event`) and re-arm one timer at :meth:`next_deadline`.
    """
