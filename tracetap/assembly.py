"""Span assembly from one socket's ordered data events: split each direction's byte stream into
messages with the protocol's parser, pair responses with requests, and emit L7 spans.

Engine-agnostic and deterministic: output depends only on the events fed in, in order, and on the
watermarks passed to `expire`. One SocketAssembler per socket (key: host|pid|socket id). It never raises
on any event, and its cost is linear in the bytes fed in (see `_Stream.credit`).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tracetap.endpoints import endpoint_of
from tracetap.flow import Endpoint, flow_id
from tracetap.model import SocketData, Span, TapSide
from tracetap.protocols import REGISTRY, detect
from tracetap.protocols.base import ErrorClass, L7Protocol, Message, Parse, Status

MAX_BUFFERED_BYTES = 64 * 1024  # past this a message still incomplete is read as the capture's prefix (final)
PARSE_CREDIT_PER_BYTE = 8  # parse work (bytes re-read) each buffered byte pays for; a message in up to 15 events is parsed at each
_FIRST_WINDOW = 512  # bytes handed to a parser at first for each message after the first in a buffer
_MAX_MARKS = 64  # event boundaries remembered per buffer; past this the first stands for the oldest ones
_SEQ_MASK = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class AssemblyConfig:
    request_timeout_ns: int = 30_000_000_000  # a request without a response becomes a TIMEOUT span after this
    # A response whose end the captured bytes do not show (its later syscalls came as byte counts, or a cut
    # prefix) ends at the other side's next message, at close, or after this long without more of its bytes.
    response_linger_ns: int = 1_000_000_000


class _Mark(NamedTuple):
    """Where one event's bytes begin in a stream's buffer (the stream's byte count), and what it says of them."""

    at: int
    start_ns: int
    seq: int | None  # of the byte at `at`
    trace_id: int | None
    last_ns: int  # the latest event merged into this one (past _MAX_MARKS)
    last_tid: int


@dataclass(slots=True)
class _Stream:
    """One direction's bytes not yet parsed, and the events they came in.

    A buffer that a parser answers "need more" for is not re-parsed on every event: that is quadratic on
    many small events. Each byte buffered earns PARSE_CREDIT_PER_BYTE bytes of parsing, and a re-parse
    waits until the credit covers the buffer; the parse owed is done when the other side speaks (the
    message is then most likely complete), at `expire` and at `close`, once per message.
    """

    buffer: bytearray = field(default_factory=bytearray)
    appended: int = 0  # bytes ever added to the buffer: the buffer starts at appended - len(buffer)
    marks: deque[_Mark] = field(default_factory=deque)
    credit: int = 0
    unparsed: bool = False  # bytes came since the last parse, which the credit did not cover
    settled: bool = False  # the parse owed to the other side speaking is done for the message in the buffer
    skip: int = 0  # bytes of the current message still to come (known size)
    draining: bool = False  # inside a message of unknown size: ignore bytes until the other side speaks

    def append(self, event: SocketData, data: bytes, offset: int) -> None:
        """data: the event's bytes from `offset` on."""
        seq = None if event.tcp_seq is None else (event.tcp_seq + offset) & _SEQ_MASK
        if len(self.marks) >= _MAX_MARKS:  # the oldest after the first merge into it: messages start and end near the newest
            self.marks[0] = self.marks[0]._replace(last_ns=self.marks[1].last_ns, last_tid=self.marks[1].last_tid)
            del self.marks[1]
        self.marks.append(_Mark(self.appended, event.crossed_ns, seq, event.syscall_trace_id, event.crossed_ns, event.tid))
        self.buffer += data
        self.appended += len(data)
        self.credit += PARSE_CREDIT_PER_BYTE * len(data)

    def start(self) -> tuple[int, int | None, int | None]:
        """(time, tcp seq, syscall trace id) of the buffer's first byte."""
        at = self.appended - len(self.buffer)
        while len(self.marks) > 1 and self.marks[1].at <= at:
            self.marks.popleft()
        mark = self.marks[0]
        return mark.start_ns, None if mark.seq is None else (mark.seq + at - mark.at) & _SEQ_MASK, mark.trace_id

    def end(self, size: int) -> tuple[int, int]:
        """(time, tid) of the event that brought the byte `size` - 1 of the buffer (or its last)."""
        at = self.appended - len(self.buffer) + min(size, len(self.buffer)) - 1
        mark = self.marks[0]
        for later in self.marks:  # the marks of one message, dropped once it is consumed: linear overall
            if later.at > at:
                break
            mark = later
        return mark.last_ns, mark.last_tid

    def consume(self, size: int) -> None:
        del self.buffer[:size]
        self.settled = False
        if not self.buffer:
            self.clear()

    def clear(self) -> None:
        self.buffer.clear()
        self.marks.clear()
        self.credit = 0
        self.unparsed = self.settled = False


@dataclass(slots=True)
class _Open:
    """A message found in a stream: a request waiting for its response, or the response in progress."""

    message: Message
    start_ns: int
    seq: int | None
    trace_id: int | None
    tid: int
    end_ns: int  # when its last captured byte crossed the socket (a response's: its latest)
    paired: bool = False  # answered: left in the arrival-order queue until it reaches the head
    seen: int = 0  # a message whose size the captured bytes do not show: its bytes so far (syscall counts included)
    cut: bool = False  # the connection closed inside it: parsed from the bytes it had


@dataclass(slots=True)
class Counters:
    spans: int = 0
    malformed: int = 0
    unparsed_bytes: int = 0
    unmatched_responses: int = 0
    cut_by_loss: int = 0  # requests dropped because the kernel lost events of their exchange
    abandoned: int = 0  # requests unanswered when capture ended (`abandon`)


_TOO_SHORT_TO_TELL = 16  # first bytes fewer than this that no protocol claims yet are held for the next ones


class SocketAssembler:
    def __init__(self, config: AssemblyConfig = AssemblyConfig()) -> None:
        self._config = config
        self.protocol: L7Protocol | None = None
        self._session: Any = None  # the protocol's per-connection state, for protocols that have one (HTTP/2)
        self._undetected = False  # the client's bytes matched no protocol: nothing to assemble
        self._missed = 0  # directions (1: egress, 2: ingress) whose first bytes matched no protocol
        self._held: list[SocketData] = []  # first events too short to tell the protocol (a length prefix read alone)
        self._client_egress: bool | None = None  # does the process write the requests (a client socket)?
        self._streams = {True: _Stream(), False: _Stream()}  # keyed by egress
        self._requests: deque[_Open] = deque()  # in arrival order, for in-order pairing and timeouts
        self._keyed: dict[int | str, _Open | deque[_Open]] = {}  # the unanswered ones with a pair key (a deque if it repeats)
        self._open_requests = 0
        self._response: tuple[_Open, _Open] | None = None  # (request, response) still receiving bytes
        self._last_egress: bool | None = None
        self._first: SocketData | None = None
        self._socket: tuple[TapSide, str, Endpoint, Endpoint] | None = None
        self._loss_generation = 0
        self._sample_ratio = 1.0
        self._tls = False  # its events are TLS plaintext from the OpenSSL probes
        self.counters = Counters()

    # input --------------------------------------------------------------------------------------------
    def add(self, event: SocketData) -> list[Span]:
        """Feed the socket's next data event; returns the spans it completed."""
        if self._first is None:
            self._first = event
            self._loss_generation = event.loss_generation
        elif event.loss_generation != self._loss_generation:
            self._loss_generation = event.loss_generation
            self._resync()
        self._sample_ratio = event.sample_ratio
        if event.tls != self._tls:
            if not event.tls:  # ciphertext of a socket whose plaintext the OpenSSL probes send (it was a tap's choice)
                return []
            self._start_tls()
        if self._undetected or event.byte_count <= 0:
            return []
        if self.protocol is None:
            events = self._detect(event)
            return [span for e in events for span in self._feed(e)]
        return self._feed(event)

    def _start_tls(self) -> None:
        """The socket's first TLS plaintext: what its handshake's ciphertext was taken for no longer holds; the
        plaintext settles the protocol, and the socket's ciphertext is ignored from here on."""
        self._tls = True
        self.protocol = self._session = self._client_egress = self._last_egress = self._response = None
        self._undetected = False
        self._missed = self._open_requests = 0
        self._held = []
        self._streams = {True: _Stream(), False: _Stream()}
        self._requests = deque()
        self._keyed = {}

    def _feed(self, event: SocketData) -> list[Span]:
        out: list[Span] = []
        egress = event.egress
        if self._last_egress is not None and egress != self._last_egress:
            self._streams[self._last_egress].draining = False  # the other side spoke: a new message may start
            out += self._settle(self._last_egress)
            if self._response is not None and egress == self._client_egress:
                out.append(self._finish_response())
        self._last_egress = egress
        stream = self._streams[egress]
        continues_response = stream.skip > 0 or stream.draining  # this event's first bytes end the response in progress
        found = self._messages(event)
        if continues_response and self._response is not None and egress != self._client_egress:
            request, response = self._response
            if response.message.tentative and event.crossed_ns - response.end_ns > self._config.response_linger_ns:
                # the server spoke unasked first (TLS 1.3's tickets), then after a pause: this is the answer
                self._response = (request, _Open(response.message._replace(tentative=False), event.crossed_ns, event.tcp_seq,
                                                 event.syscall_trace_id, event.tid, event.crossed_ns, seen=event.byte_count))
            else:
                response.end_ns = event.crossed_ns
                if response.message.size is None:
                    response.seen += event.byte_count
        elif continues_response and egress == self._client_egress and self._requests and self._requests[-1].message.size is None:
            self._requests[-1].seen += event.byte_count  # more of a request whose end its captured bytes do not show
        return out + self._take(found, egress)

    def expire(self, watermark_ns: int) -> list[Span]:
        """Requests older than the timeout at this event-time watermark become TIMEOUT spans; a response of unknown
        end with nothing more for the linger ends (a tentative one, only once its request times out: its answer
        may still come)."""
        out = self._settle(True, force=self._stale(True, watermark_ns)) + self._settle(False, force=self._stale(False, watermark_ns))
        if self._response is not None and self._response_due_ns() <= watermark_ns:
            out.append(self._finish_response())
            self._streams[not self._client_egress].draining = False  # its later bytes, if any, are read afresh
        while (oldest := self._oldest()) is not None and oldest.start_ns + self._config.request_timeout_ns <= watermark_ns:
            self._pop_oldest()
            out.append(self._span(oldest, None, error=ErrorClass.TIMEOUT, end_ns=oldest.start_ns + self._config.request_timeout_ns))
        return out

    def close(self, time_ns: int, loss_generation: int | None = None) -> list[Span]:
        """The socket closed: the response in progress ends, open requests end flagged as cut off. A close that
        carries a loss generation its last data events did not (their marker was lost too) drops what is open
        instead, counted in cut_by_loss: its end was lost, not cut."""
        if loss_generation is not None and self._first is not None and loss_generation != self._loss_generation:
            self._loss_generation = loss_generation
            self._resync()
        self._held = []
        out = self._flush(True) + self._flush(False)
        if self._response is not None:
            out.append(self._finish_response())
        while (request := self._pop_oldest()) is not None:
            span = self._span(request, None, error=ErrorClass.SERVER_ERROR, end_ns=max(time_ns, request.start_ns))
            span.connection_closed = True
            span.response_message = "connection closed before the response"
            out.append(span)
        return out

    def abandon(self) -> list[Span]:
        """Capture ends here (the agent stops), not the connection: a response in progress ends as captured, and
        requests still unanswered are dropped and counted, not reported as errors: nothing says how they ended."""
        self._held = []
        out = self._settle(True, force=True) + self._settle(False, force=True)
        if self._response is not None:
            out.append(self._finish_response())
        self.counters.abandoned += self._drop_requests()
        return out

    def _resync(self) -> None:
        """The kernel lost events of this socket (and shed the rest of that exchange): what is open is incomplete.
        It is dropped, counted, and never reported as a span; the next request starts clean."""
        self.counters.cut_by_loss += self._drop_requests() + (self._response is not None)
        self._response = None
        if self._session is not None:
            self._session.lost()
        self._last_egress = None
        for stream in self._streams.values():
            self.counters.unparsed_bytes += len(stream.buffer)
            stream.clear()
            stream.skip = 0
            stream.draining = False

    def _drop_requests(self) -> int:
        """Forget every unanswered request; how many there were."""
        dropped = self._open_requests
        self._requests.clear()
        self._keyed.clear()
        self._open_requests = 0
        return dropped

    @property
    def idle(self) -> bool:
        return (not self._open_requests and self._response is None and not self._held
                and not any(s.unparsed for s in self._streams.values()))

    @property
    def next_deadline_ns(self) -> int | None:
        """The watermark at which `expire` next has something to do (None: nothing open can time out)."""
        deadlines = [s.marks[-1].last_ns + (self._config.request_timeout_ns if s.settled else 0)  # a parse held back
                     for s in self._streams.values() if s.unparsed]
        oldest = self._oldest()
        if oldest is not None:
            deadlines.append(oldest.start_ns + self._config.request_timeout_ns)
        if self._response is not None:
            deadlines.append(self._response_due_ns())
        return min(deadlines, default=None)

    def _response_due_ns(self) -> int:
        """When the response in progress ends if nothing more comes."""
        assert self._response is not None
        request, response = self._response
        if response.message.tentative:
            return request.start_ns + self._config.request_timeout_ns
        return response.end_ns + self._config.response_linger_ns

    # state --------------------------------------------------------------------------------------------
    def to_state(self) -> list[Any]:
        """JSON-ready data (bytes as latin-1 text); `from_state` reads it back. The first event is kept without
        its payload, which only detection read; answered requests still queued are left out."""
        protocol = None
        if self.protocol is not None:
            protocol = [next(l4 for l4, known in REGISTRY.items() if self.protocol in known), self.protocol.name]
        streams = [[s.buffer.decode("latin-1"), s.appended, [list(m) for m in s.marks], s.credit, s.unparsed, s.settled, s.skip,
                    s.draining] for s in (self._streams[True], self._streams[False])]
        response = None if self._response is None else [_open_state(self._response[0]), _open_state(self._response[1])]
        first = None if self._first is None else [*self._first[:15], "", *self._first[16:]]
        socket = None if self._socket is None else [str(self._socket[0]), self._socket[1], list(self._socket[2]), list(self._socket[3])]
        c = self.counters
        return [protocol, self._undetected, self._client_egress, streams, [_open_state(r) for r in self._requests if not r.paired],
                response, self._last_egress, first, socket, [c.spans, c.malformed, c.unparsed_bytes, c.unmatched_responses, c.cut_by_loss, c.abandoned],
                [self._loss_generation, self._sample_ratio], None if self._session is None else self._session.to_state(), self._missed,
                [[*e[:15], e.payload.decode("latin-1"), *e[16:]] for e in self._held], self._tls]

    @classmethod
    def from_state(cls, state: list[Any], config: AssemblyConfig) -> SocketAssembler:
        protocol, undetected, client_egress, streams, requests, response, last_egress, first, socket, counters, *later = state
        assembler = cls(config)
        if later:  # absent in state written before sampling existed
            assembler._loss_generation, assembler._sample_ratio = later[0]
        if protocol is not None:
            assembler.protocol = next(p for p in REGISTRY[protocol[0]] if p.name == protocol[1])
            if len(later) > 1 and later[1] is not None:  # absent in state written before sessions existed
                assembler._session = assembler.protocol.session_from_state(later[1])  # type: ignore[attr-defined]
            elif hasattr(assembler.protocol, "session"):
                assembler._session = assembler.protocol.session()
        if len(later) > 2:  # absent in state written before detection could wait for the client's bytes
            assembler._missed = later[2]
            assembler._held = [SocketData(*e[:15], e[15].encode("latin-1"), *e[16:]) for e in later[3]]
        if len(later) > 4:  # absent in state written before TLS plaintext
            assembler._tls = later[4] is True
        assembler._undetected, assembler._client_egress, assembler._last_egress = undetected, client_egress, last_egress
        for egress, (buffer, appended, marks, credit, unparsed, settled, skip, draining) in zip((True, False), streams):
            assembler._streams[egress] = _Stream(bytearray(buffer.encode("latin-1")), appended, deque(_Mark(*m) for m in marks),
                                                 credit, unparsed, settled, skip, draining)
        for request in requests:
            assembler._queue(_open_from_state(request))  # rebuilds the pair-key index and the open count
        if response is not None:
            assembler._response = (_open_from_state(response[0]), _open_from_state(response[1]))
        if first is not None:
            assembler._first = SocketData(*first[:15], b"", *first[16:])
        if socket is not None:
            assembler._socket = (TapSide(socket[0]), socket[1], Endpoint(*socket[2]), Endpoint(*socket[3]))
        assembler.counters = Counters(*counters)
        return assembler

    # internals ----------------------------------------------------------------------------------------
    def _detect(self, event: SocketData) -> list[SocketData]:
        """Pick the protocol from the first payload, and which direction carries requests: the events to assemble
        (with the short ones held before this one), or none yet."""
        if not event.payload:
            return []
        held = [e for e in self._held if e.egress == event.egress]  # a direction's first bytes, read in pieces
        data = b"".join(e.payload for e in held) + event.payload
        local_is_server = event.role == "SERVER" or (event.role == "UNKNOWN" and not event.egress)
        server_port = event.local_port if local_is_server else event.remote_port
        protocol = detect(event.l4_protocol, data, server_port)
        if protocol is None and event.l4_protocol == "TCP" and len(data) < _TOO_SHORT_TO_TELL and len(event.payload) == event.byte_count:
            self._held = held + [event]  # a server reads Kafka's (or MySQL's) length prefix alone, then the rest
            return []
        self._held = []
        if protocol is None:
            # A capture that starts mid-connection may start with a response: only the client's bytes settle it. Which
            # side is the client is known from the role, or else once both directions failed.
            self._missed |= 1 if event.egress else 2
            from_server = event.role == ("SERVER" if event.egress else "CLIENT")
            self._undetected = not from_server and (event.role != "UNKNOWN" or self._missed == 3)
            return []
        self.protocol = protocol
        session = getattr(protocol, "session", None)
        self._session = session() if session is not None else None
        if event.role == "CLIENT":
            self._client_egress = True
        elif event.role == "SERVER":
            self._client_egress = False
        else:  # the first bytes the protocol recognises travel from client to server, unless the server speaks first
            server_first = getattr(protocol, "server_first", None)
            self._client_egress = not event.egress if server_first and server_first(data) else event.egress
        return held + [event]

    def _messages(self, event: SocketData) -> list[_Open]:
        assert self.protocol is not None
        request = event.egress == self._client_egress
        stream = self._streams[event.egress]
        uncaptured = max(event.byte_count - len(event.payload), 0)
        payload = event.payload[:event.byte_count]
        if stream.draining:
            return []
        whole = None
        if not stream.buffer and not stream.skip and not uncaptured:  # the common case: one whole message per call
            whole = (self.protocol.parse_request if request else self.protocol.parse_response)(payload, False)
            if whole.status is Status.MESSAGE and whole.message is not None and whole.message.size == len(payload):
                return [_Open(whole.message, event.crossed_ns, event.tcp_seq, event.syscall_trace_id, event.tid, event.crossed_ns)]
        if stream.skip >= event.byte_count:
            stream.skip -= event.byte_count
            return []
        offset = stream.skip
        stream.skip = 0
        if offset >= len(payload):
            if stream.buffer and not offset:  # the message in the buffer goes on in bytes not captured (a later syscall
                return self._parse(stream, request, uncaptured, cut_ns=event.crossed_ns)  # of it, sent as a byte count)
            stream.draining = True  # the next message began in bytes the capture did not keep
            return []
        stream.append(event, payload[offset:], offset)
        if not uncaptured and stream.credit < len(stream.buffer) and len(stream.buffer) <= MAX_BUFFERED_BYTES:
            stream.unparsed = True
            return []
        return self._parse(stream, request, uncaptured, whole)

    def _parse(self, stream: _Stream, request: bool, uncaptured: int = 0, first: Parse | None = None,
               cut_ns: int | None = None, final: bool = False) -> list[_Open]:
        """Every message the buffer holds. With uncaptured bytes after it, or `final` (nothing follows: the connection
        closed), the buffer is a prefix the capture cut (`cut_ns`: when those bytes crossed, if they came in an event of
        their own). `first`: what the parser said of the whole buffer already."""
        assert self.protocol is not None
        parse = self.protocol.parse_request if request else self.protocol.parse_response
        found: list[_Open] = []
        stream.unparsed = False
        cut = uncaptured > 0 or final
        data = bytes(stream.buffer)
        at = 0
        while at < len(data):
            result = first if first is not None and not at else self._read(parse, data, at, cut, stream)
            if result.status is Status.NEED_MORE and not cut:
                if len(data) - at <= MAX_BUFFERED_BYTES:
                    break
                cut = True  # too long to wait for: read what the prefix shows, then resynchronise at the other side's turn
                stream.credit -= len(data) - at
                result = parse(data[at:], True)
            size = result.message.size if result.message is not None else None
            if result.status is not Status.MESSAGE or result.message is None or (size is not None and size <= 0):  # no endless loop
                self.counters.malformed += 1
                self._drop(stream)
                break
            message = result.message
            end_ns, tid = stream.end(message.size or len(stream.buffer))
            held = len(data) - at
            if cut_ns is not None and (message.size is None or message.size > held):  # it goes on in the uncaptured bytes
                end_ns = max(end_ns, cut_ns)
            found.append(_Open(message, *stream.start(), tid, end_ns, seen=held + uncaptured if message.size is None else 0))
            if message.size is None:  # the end is not in the bytes: ignore the rest until the other side speaks
                stream.clear()
                stream.draining = True
                break
            if message.size <= len(data) - at:
                stream.consume(message.size)
                at += message.size
                continue
            remaining = message.size - (len(data) - at) - uncaptured
            stream.clear()
            if remaining >= 0:
                stream.skip = remaining
            else:  # the next message began in bytes the capture did not keep: resynchronise at the other side's turn
                stream.draining = True
            break
        if cut and stream.buffer:
            self._drop(stream)
        return found

    @staticmethod
    def _read(parse: Callable[[bytes, bool], Parse], data: bytes, at: int, final: bool, stream: _Stream) -> Parse:
        """The message at `at`, parsed from a window of the bytes that doubles until the parser knows its size:
        handing each of many small messages all the bytes after it would be quadratic."""
        window = len(data) if not at else _FIRST_WINDOW  # the first message needs no copy
        while True:
            whole = at + window >= len(data)
            view = data if not at and whole else data[at:at + window]
            stream.credit -= len(view)
            result = parse(view, final and whole)
            if whole or (result.status is Status.MESSAGE and result.message is not None and result.message.size is not None):
                return result
            window *= 2

    def _flush(self, egress: bool) -> list[Span]:
        """The connection closed: the messages its held bytes complete, then what a message the close cut off shows
        (a PostgreSQL error without its ReadyForQuery keeps its SQLSTATE), flagged `cut`."""
        stream = self._streams[egress]
        request = egress == self._client_egress
        found = self._parse(stream, request) if stream.buffer else []
        if stream.buffer and not stream.draining:
            for cut in (cut_off := self._parse(stream, request, final=True)):
                cut.cut = True
            found += cut_off
        return self._take(found, egress)

    def _stale(self, egress: bool, watermark_ns: int) -> bool:
        """Bytes held back after the parse owed was done, and nothing more for a request timeout: parse them anyway."""
        stream = self._streams[egress]
        return stream.unparsed and stream.marks[-1].last_ns + self._config.request_timeout_ns <= watermark_ns

    def _settle(self, egress: bool, force: bool = False) -> list[Span]:
        """Parse the bytes a stream held back for want of credit (once per message, unless forced)."""
        stream = self._streams[egress]
        if not stream.unparsed or (stream.settled and not force):
            return []
        stream.settled = True
        return self._take(self._parse(stream, egress == self._client_egress), egress)

    def _take(self, found: list[_Open], egress: bool) -> list[Span]:
        """Queue the requests found, pair the responses found; the spans this completes."""
        out: list[Span] = []
        if self._session is not None:
            found = self._accept(found, egress == self._client_egress)
        if egress == self._client_egress:
            for request in found:
                if request.message.cancelled:
                    out += self._cancel(request)
                elif request.message.expects_response:
                    self._queue(request)
            return out
        if not found and self._response is None:
            return out
        for response in found:
            if self._response is not None:
                out.append(self._finish_response())
            request = self._pop_request(response.message)
            if request is None:
                self.counters.unmatched_responses += 1
                continue
            finish = getattr(self.protocol, "finish", None)
            if finish is not None:
                response.message = finish(request.message, response.message)
            self._response = (request, response)
        stream = self._streams[egress]
        if self._response is not None and stream.skip == 0 and not stream.draining:  # its last byte is in
            out.append(self._finish_response())
        return out

    def _accept(self, found: list[_Open], from_client: bool) -> list[_Open]:
        """What the session makes of each message found, in order: the requests and responses they complete."""
        kept = []
        for o in found:
            message = self._session.accept(o.message, from_client)
            if message is not None:
                o.message = message
                kept.append(o)
        return kept

    def _cancel(self, cancel: _Open) -> list[Span]:
        """The client withdrew its open request of this pair key: its span ends here."""
        key = cancel.message.pair_key
        if key is None or key not in self._keyed:
            return []
        request = self._unkey(key)
        request.paired = True
        self._open_requests -= 1
        span = self._span(request, None, error=ErrorClass.CLIENT_ERROR, end_ns=cancel.end_ns)
        span.response_message = cancel.message.response_message
        return [span]

    def _drop(self, stream: _Stream) -> None:
        self.counters.unparsed_bytes += len(stream.buffer)
        stream.clear()
        stream.draining = True

    # requests waiting for their response: in arrival order, and by pair key (linear however they are answered)
    def _queue(self, request: _Open) -> None:
        self._requests.append(request)
        self._open_requests += 1
        key = request.message.pair_key
        if key is not None:
            held = self._keyed.get(key)
            if held is None:
                self._keyed[key] = request
            elif isinstance(held, deque):
                held.append(request)
            else:
                self._keyed[key] = deque((held, request))

    def _oldest(self) -> _Open | None:
        while self._requests and self._requests[0].paired:
            self._requests.popleft()
        return self._requests[0] if self._requests else None

    def _pop_oldest(self) -> _Open | None:
        requests = self._requests
        while requests and requests[0].paired:
            requests.popleft()
        if not requests:
            return None
        request = requests.popleft()
        if request.message.pair_key is not None:  # every older request is answered, so this one heads its key's
            self._unkey(request.message.pair_key)
        self._open_requests -= 1
        return request

    def _pop_request(self, response: Message) -> _Open | None:
        if response.pair_key is None:
            return self._pop_oldest()
        if response.pair_key not in self._keyed:
            return None
        request = self._unkey(response.pair_key)
        request.paired = True  # leaves the arrival-order queue when it reaches the head
        self._open_requests -= 1
        return request

    def _unkey(self, key: int | str) -> _Open:
        """The oldest unanswered request with this key, out of the index."""
        held = self._keyed[key]
        if not isinstance(held, deque):
            del self._keyed[key]
            return held
        request = held.popleft()
        if not held:
            del self._keyed[key]
        return request

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
        # gRPC is told by either side's content-type or trailers (mid-connection, one side's may be unknown)
        protocol = ("GRPC" if "GRPC" in (req.protocol, resp and resp.protocol) else req.protocol) or self.protocol.name
        self.counters.spans += 1
        return Span(
            protocol=protocol, tap_side=tap_side,
            host=first.host, start_ns=request.start_ns, end_ns=max(end_ns, request.start_ns),
            flow_id=flow, l4_protocol=first.l4_protocol,
            client_ip=client.ip, client_port=client.port, server_ip=server.ip, server_port=server.port,
            request_type=req.request_type or (resp.request_type if resp else None),
            request_domain=req.request_domain, request_resource=req.request_resource,
            endpoint=endpoint_of(protocol, req.request_type, req.request_resource),
            response_code=resp.response_code if resp else None, response_message=resp.response_message if resp else None,
            error_class=str(error) if error else None, connection_closed=bool(response and response.cut),
            request_bytes=resp.request_size if resp is not None and resp.request_size is not None else req.size or request.seen,
            response_bytes=(resp.size or response.seen) if response else 0,
            req_tcp_seq=request.seq, resp_tcp_seq=response.seq if response else None,
            syscall_trace_id_request=request.trace_id, syscall_trace_id_response=response.trace_id if response else None,
            pid=first.pid, tid=request.tid, comm=first.comm,
            trace_headers=dict(req.trace_headers), attributes=dict(req.attributes + (resp.attributes if resp else ())),
            sample_ratio=self._sample_ratio, identity=first.socket_key, tls=self._tls or getattr(self.protocol, "encrypted", False),
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
               [list(a) for a in m.attributes], m.expects_response, m.head.decode("latin-1"), m.protocol, m.request_size, m.tentative]
    return [message, o.start_ns, o.seq, o.trace_id, o.tid, o.end_ns, o.seen]


def _open_from_state(state: list[Any]) -> _Open:
    message, start_ns, seq, trace_id, tid, end_ns, *seen = state  # `seen`: absent in state written before it existed
    (is_request, size, request_type, domain, resource, code, response_message, error, pair_key, headers, attributes, expects,
     head, *later) = message  # `protocol`, `request_size`, `tentative`: absent in state written before they existed
    return _Open(Message(is_request, size, request_type, domain, resource, code, response_message, None if error is None else ErrorClass(error),
                         pair_key, tuple((k, v) for k, v in headers), tuple((k, v) for k, v in attributes), expects,
                         head.encode("latin-1"), later[0] if later else None, request_size=later[1] if len(later) > 1 else None,
                         tentative=len(later) > 2 and later[2] is True),
                 start_ns, seq, trace_id, tid, end_ns, seen=seen[0] if seen else 0)
