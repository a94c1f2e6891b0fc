"""Span assembly from one socket's ordered data events: split each direction's byte stream into
messages with the protocol's parser, pair responses with requests, and emit L7 spans.

Engine-agnostic and deterministic: output depends only on the events fed in, in order, and on the
watermarks passed to `expire`. One SocketAssembler per socket (key: host|pid|socket id).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tracetap.endpoints import endpoint_of
from tracetap.flow import Endpoint, flow_id
from tracetap.model import SocketData, Span, TapSide
from tracetap.protocols import REGISTRY, detect
from tracetap.protocols.base import ErrorClass, L7Protocol, Message, Status

MAX_BUFFERED_BYTES = 64 * 1024  # a header that never completes is dropped past this, and counted


@dataclass(frozen=True, slots=True)
class AssemblyConfig:
    request_timeout_ns: int = 30_000_000_000  # a request without a response becomes a TIMEOUT span after this


@dataclass(slots=True)
class _Stream:
    """One direction's bytes not yet parsed, and where they began."""

    buffer: bytearray = field(default_factory=bytearray)
    start_ns: int = 0
    seq: int | None = None
    trace_id: int | None = None
    skip: int = 0  # bytes of the current message still to come (known size)
    draining: bool = False  # inside a message of unknown size: ignore bytes until the other side speaks


@dataclass(slots=True)
class _Open:
    message: Message
    start_ns: int
    seq: int | None
    trace_id: int | None
    tid: int
    end_ns: int


@dataclass(slots=True)
class Counters:
    spans: int = 0
    malformed: int = 0
    unparsed_bytes: int = 0
    unmatched_responses: int = 0


class SocketAssembler:
    def __init__(self, config: AssemblyConfig = AssemblyConfig()) -> None:
        self._config = config
        self.protocol: L7Protocol | None = None
        self._undetected = False  # the first client bytes matched no protocol: nothing to assemble
        self._client_egress: bool | None = None  # does the process write the requests (a client socket)?
        self._streams = {True: _Stream(), False: _Stream()}  # keyed by egress
        self._requests: deque[_Open] = deque()
        self._response: tuple[_Open, _Open] | None = None  # (request, response) still receiving bytes
        self._last_egress: bool | None = None
        self._first: SocketData | None = None
        self._socket: tuple[TapSide, str, Endpoint, Endpoint] | None = None
        self.counters = Counters()

    # input --------------------------------------------------------------------------------------------
    def add(self, event: SocketData) -> list[Span]:
        """Feed the socket's next data event; returns the spans it completed."""
        if self._first is None:
            self._first = event
        if self._undetected or event.byte_count <= 0:
            return []
        if self.protocol is None and not self._detect(event):
            return []
        out: list[Span] = []
        egress = event.egress
        if self._last_egress is not None and egress != self._last_egress:
            self._streams[self._last_egress].draining = False  # the other side spoke: a new message may start
            if self._response is not None and egress == self._client_egress:
                out.append(self._finish_response())
        self._last_egress = egress
        if egress == self._client_egress:
            for message, start, seq, trace in self._messages(event, request=True):
                if not message.expects_response:
                    continue
                self._requests.append(_Open(message, start, seq, trace, event.tid, event.crossed_ns))
        else:
            for message, start, seq, trace in self._messages(event, request=False):
                if self._response is not None:
                    out.append(self._finish_response())
                request = self._pop_request(message)
                if request is None:
                    self.counters.unmatched_responses += 1
                    continue
                finish = getattr(self.protocol, "finish", None)
                if finish is not None:
                    message = finish(request.message, message)
                self._response = (request, _Open(message, start, seq, trace, event.tid, event.crossed_ns))
            if self._response is not None:
                self._response[1].end_ns = event.crossed_ns
                stream = self._streams[egress]
                if stream.skip == 0 and not stream.draining and not stream.buffer:
                    out.append(self._finish_response())
        return out

    def expire(self, watermark_ns: int) -> list[Span]:
        """Requests older than the timeout at this event-time watermark become TIMEOUT spans."""
        out = []
        while self._requests and self._requests[0].start_ns + self._config.request_timeout_ns <= watermark_ns:
            request = self._requests.popleft()
            out.append(self._span(request, None, error=ErrorClass.TIMEOUT, end_ns=request.start_ns + self._config.request_timeout_ns))
        return out

    def close(self, time_ns: int) -> list[Span]:
        """The socket closed: the response in progress ends, open requests end flagged as cut off."""
        out = [self._finish_response()] if self._response is not None else []
        while self._requests:
            request = self._requests.popleft()
            span = self._span(request, None, error=ErrorClass.SERVER_ERROR, end_ns=max(time_ns, request.start_ns))
            span.connection_closed = True
            span.response_message = "connection closed before the response"
            out.append(span)
        return out

    @property
    def idle(self) -> bool:
        return not self._requests and self._response is None

    @property
    def next_deadline_ns(self) -> int | None:
        """The watermark at which `expire` next has something to do (None: nothing open can time out)."""
        return self._requests[0].start_ns + self._config.request_timeout_ns if self._requests else None

    # state --------------------------------------------------------------------------------------------
    def to_state(self) -> list[Any]:
        """JSON-ready data (bytes as latin-1 text); `from_state` reads it back. The first event is kept without
        its payload, which only detection read."""
        protocol = None
        if self.protocol is not None:
            protocol = [next(l4 for l4, known in REGISTRY.items() if self.protocol in known), self.protocol.name]
        streams = [[s.buffer.decode("latin-1"), s.start_ns, s.seq, s.trace_id, s.skip, s.draining]
                   for s in (self._streams[True], self._streams[False])]
        response = None if self._response is None else [_open_state(self._response[0]), _open_state(self._response[1])]
        first = None if self._first is None else [*self._first[:15], "", *self._first[16:]]
        socket = None if self._socket is None else [str(self._socket[0]), self._socket[1], list(self._socket[2]), list(self._socket[3])]
        c = self.counters
        return [protocol, self._undetected, self._client_egress, streams, [_open_state(r) for r in self._requests], response,
                self._last_egress, first, socket, [c.spans, c.malformed, c.unparsed_bytes, c.unmatched_responses]]

    @classmethod
    def from_state(cls, state: list[Any], config: AssemblyConfig) -> SocketAssembler:
        protocol, undetected, client_egress, streams, requests, response, last_egress, first, socket, counters = state
        assembler = cls(config)
        if protocol is not None:
            assembler.protocol = next(p for p in REGISTRY[protocol[0]] if p.name == protocol[1])
        assembler._undetected, assembler._client_egress, assembler._last_egress = undetected, client_egress, last_egress
        for egress, (buffer, start_ns, seq, trace_id, skip, draining) in zip((True, False), streams):
            assembler._streams[egress] = _Stream(bytearray(buffer.encode("latin-1")), start_ns, seq, trace_id, skip, draining)
        assembler._requests = deque(_open_from_state(r) for r in requests)
        if response is not None:
            assembler._response = (_open_from_state(response[0]), _open_from_state(response[1]))
        if first is not None:
            assembler._first = SocketData(*first[:15], b"", *first[16:])
        if socket is not None:
            assembler._socket = (TapSide(socket[0]), socket[1], Endpoint(*socket[2]), Endpoint(*socket[3]))
        assembler.counters = Counters(*counters)
        return assembler

    # internals ----------------------------------------------------------------------------------------
    def _detect(self, event: SocketData) -> bool:
        """Pick the protocol from the first payload, and which direction carries requests."""
        if not event.payload:
            return False
        local_is_server = event.role == "SERVER" or (event.role == "UNKNOWN" and not event.egress)
        server_port = event.local_port if local_is_server else event.remote_port
        protocol = detect(event.l4_protocol, event.payload, server_port)
        if protocol is None:
            self._undetected = True
            return False
        self.protocol = protocol
        if event.role == "CLIENT":
            self._client_egress = True
        elif event.role == "SERVER":
            self._client_egress = False
        else:  # the first bytes the protocol recognises travel from client to server, unless the server speaks first
            server_first = getattr(protocol, "server_first", None)
            self._client_egress = not event.egress if server_first and server_first(event.payload) else event.egress
        return True

    def _messages(self, event: SocketData, request: bool) -> list[tuple[Message, int, int | None, int | None]]:
        assert self.protocol is not None
        stream = self._streams[event.egress]
        uncaptured = max(event.byte_count - len(event.payload), 0)
        payload = event.payload[:event.byte_count]
        if stream.draining:
            return []
        if not stream.buffer and not stream.skip and not uncaptured:  # the common case: one whole message per call
            whole = (self.protocol.parse_request if request else self.protocol.parse_response)(payload, False)
            if whole.status is Status.MESSAGE and whole.message is not None and whole.message.size == len(payload):
                return [(whole.message, event.crossed_ns, event.tcp_seq, event.syscall_trace_id)]
        if stream.skip >= event.byte_count:
            stream.skip -= event.byte_count
            return []
        offset = stream.skip
        stream.skip = 0
        if not stream.buffer:
            stream.start_ns = event.crossed_ns
            stream.seq = None if event.tcp_seq is None else (event.tcp_seq + offset) & 0xFFFFFFFF
            stream.trace_id = event.syscall_trace_id
        stream.buffer += payload[offset:]
        parse = self.protocol.parse_request if request else self.protocol.parse_response
        found = []
        consumed_from_event = offset  # where in this event the buffer's unparsed bytes begin
        while stream.buffer:
            result = parse(bytes(stream.buffer), uncaptured > 0)
            if result.status is Status.NEED_MORE and not uncaptured:
                if len(stream.buffer) > MAX_BUFFERED_BYTES:
                    self._drop(stream)
                break
            if result.status is not Status.MESSAGE:
                self.counters.malformed += 1
                self._drop(stream)
                break
            message = result.message
            assert message is not None
            found.append((message, stream.start_ns, stream.seq, stream.trace_id))
            if message.size is None:  # the end is not in the bytes: ignore the rest until the other side speaks
                stream.buffer.clear()
                stream.draining = True
                break
            if message.size <= len(stream.buffer):
                del stream.buffer[:message.size]
                consumed_from_event = len(payload) - len(stream.buffer)
                stream.start_ns = event.crossed_ns
                stream.seq = None if event.tcp_seq is None else (event.tcp_seq + consumed_from_event) & 0xFFFFFFFF
                stream.trace_id = event.syscall_trace_id
                continue
            remaining = message.size - len(stream.buffer) - uncaptured
            stream.buffer.clear()
            if remaining >= 0:
                stream.skip = remaining
            else:  # the next message began in bytes the capture did not keep: resynchronise at the other side's turn
                stream.draining = True
            break
        else:
            return found
        if uncaptured and stream.buffer:
            self._drop(stream)
        return found

    def _drop(self, stream: _Stream) -> None:
        self.counters.unparsed_bytes += len(stream.buffer)
        stream.buffer.clear()
        stream.draining = True

    def _pop_request(self, response: Message) -> _Open | None:
        if response.pair_key is not None:
            for i, request in enumerate(self._requests):
                if request.message.pair_key == response.pair_key:
                    del self._requests[i]
                    return request
            return None
        return self._requests.popleft() if self._requests else None

    def _finish_response(self) -> Span:
        assert self._response is not None
        request, response = self._response
        self._response = None
        return self._span(request, response, error=response.message.error_class, end_ns=response.end_ns)

    def _span(self, request: _Open, response: _Open | None, error: ErrorClass | None, end_ns: int) -> Span:
        assert self._first is not None and self.protocol is not None
        if self._socket is None:
            self._socket = self._describe_socket()
        first = self._first
        tap_side, flow, client, server = self._socket
        req, resp = request.message, response.message if response else None
        self.counters.spans += 1
        return Span(
            protocol=self.protocol.name, tap_side=tap_side,
            host=first.host, start_ns=request.start_ns, end_ns=max(end_ns, request.start_ns),
            flow_id=flow, l4_protocol=first.l4_protocol,
            client_ip=client.ip, client_port=client.port, server_ip=server.ip, server_port=server.port,
            request_type=req.request_type or (resp.request_type if resp else None),
            request_domain=req.request_domain, request_resource=req.request_resource,
            endpoint=endpoint_of(self.protocol.name, req.request_type, req.request_resource),
            response_code=resp.response_code if resp else None, response_message=resp.response_message if resp else None,
            error_class=str(error) if error else None,
            request_bytes=req.size or 0, response_bytes=(resp.size or 0) if resp else 0,
            req_tcp_seq=request.seq, resp_tcp_seq=response.seq if response else None,
            syscall_trace_id_request=request.trace_id, syscall_trace_id_response=response.trace_id if response else None,
            pid=first.pid, tid=request.tid, comm=first.comm,
            trace_headers=dict(req.trace_headers), attributes=dict(req.attributes + (resp.attributes if resp else ())),
            identity=first.socket_key,
        )

    def _describe_socket(self) -> tuple[TapSide, str, Endpoint, Endpoint]:
        """What every span of this socket shares: its tap side, flow id, client and server."""
        assert self._first is not None
        first = self._first
        local, remote = Endpoint(first.local_ip, first.local_port), Endpoint(first.remote_ip, first.remote_port)
        client_side = self._client_egress  # this process is the client when it writes the requests
        client, server = (local, remote) if client_side else (remote, local)
        return (TapSide.CLIENT_PROCESS if client_side else TapSide.SERVER_PROCESS, flow_id(first.l4_protocol, local, remote), client, server)


def _open_state(o: _Open) -> list[Any]:
    m = o.message
    message = [m.is_request, m.size, m.request_type, m.request_domain, m.request_resource, m.response_code, m.response_message,
               None if m.error_class is None else str(m.error_class), m.pair_key, [list(h) for h in m.trace_headers],
               [list(a) for a in m.attributes], m.expects_response, m.head.decode("latin-1")]
    return [message, o.start_ns, o.seq, o.trace_id, o.tid, o.end_ns]


def _open_from_state(state: list[Any]) -> _Open:
    message, start_ns, seq, trace_id, tid, end_ns = state
    (is_request, size, request_type, domain, resource, code, response_message, error, pair_key, headers, attributes, expects,
     head) = message
    return _Open(Message(is_request, size, request_type, domain, resource, code, response_message, None if error is None else ErrorClass(error),
                         pair_key, tuple((k, v) for k, v in headers), tuple((k, v) for k, v in attributes), expects,
                         head.encode("latin-1")), start_ns, seq, trace_id, tid, end_ns)
