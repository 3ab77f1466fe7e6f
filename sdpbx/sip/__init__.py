"""The sans-IO SIP core: messages, URIs, headers, framing, transactions, digest.

Nothing in this package touches a socket, a clock or an event loop. Bytes and
events go in (with the current time as an argument), bytes and events come
out; the I/O layers in :mod:`sdpbx.transport` and :mod:`sdpbx.stack` drive it.
"""

from .dialog import Dialog, DialogId, DialogState, dialog_id_for_request, dialog_id_for_response
from .errors import LocalProtocolError, SipError, SipParseError
from .fields import CSeq, NameAddr, Via, parse_header_params
from .framing import StreamFramer
from .headers import Headers, ParseLimits, canonical_key, parse_number, split_commas
from .ids import new_branch, new_call_id, new_tag
from .message import Message, Request, Response, make_response, parse_message
from .reasons import reason_phrase
from .transaction import (
    AckForInvite,
    ClientTransaction,
    NewTransaction,
    RequestOutcome,
    ResponseReceived,
    Retransmission,
    ServerTransaction,
    StrayAck,
    TimerConfig,
    Transaction,
    TransactionEvent,
    TransactionLayer,
    TransactionState,
    TransactionTerminated,
    TransactionTimeout,
    build_ack,
    build_cancel,
)
from .uri import AbsoluteUri, SipUri, TelUri, Uri, parse_uri

__all__ = [
    "AbsoluteUri",
    "AckForInvite",
    "CSeq",
    "ClientTransaction",
    "Dialog",
    "DialogId",
    "DialogState",
    "Headers",
    "LocalProtocolError",
    "Message",
    "NameAddr",
    "NewTransaction",
    "ParseLimits",
    "Request",
    "RequestOutcome",
    "Response",
    "ResponseReceived",
    "Retransmission",
    "ServerTransaction",
    "SipError",
    "SipParseError",
    "SipUri",
    "StrayAck",
    "StreamFramer",
    "TelUri",
    "TimerConfig",
    "Transaction",
    "TransactionEvent",
    "TransactionLayer",
    "TransactionState",
    "TransactionTerminated",
    "TransactionTimeout",
    "Uri",
    "Via",
    "build_ack",
    "build_cancel",
    "canonical_key",
    "dialog_id_for_request",
    "dialog_id_for_response",
    "make_response",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_header_params",
    "parse_message",
    "parse_number",
    "parse_uri",
    "reason_phrase",
    "split_commas",
]
