"""Mutually authenticated, encrypted sessions between two nodes (sans-IO).

Theory of operation
-------------------
A session runs over any ordered byte stream (TCP in the agent, memory in tests).
Every unit on the stream is a frame: a 4-byte big-endian length and a body
(:func:`protocol._codec.frame`); the announced length is checked against the
limit of the session's *phase* before a body is buffered: until the handshake is
complete a frame can only be a handshake message, so the limit is
:data:`HANDSHAKE_MAX_FRAME` (8 KiB: a ``Hello`` is about 0.5-1.2 KiB, a
``HandshakeReject`` at most about 4 KiB); the session's ``max_frame`` (8 MiB by
default) applies only to records, after the peer has authenticated. Unconsumed
bytes are then at most one partial frame of the phase's limit
(:attr:`SecureConnection.buffered`), plus what one ``receive_data`` call hands in.

Handshake (message type ids 1-19), initiator I (the dialler), responder R::

    I -> R   Hello(fleet_id, version, ephemeral_I, certificate_I, nonce_I)
    R -> I   Hello(fleet_id, version, ephemeral_R, certificate_R, nonce_R)
    R -> I   Auth(sig_R)
    I -> R   Auth(sig_I)

``transcript = BLAKE3("shoal-handshake-v1" || len || Hello_I || len || Hello_R)``
over the exact wire bytes of both hellos, so it binds both ephemeral keys, both
certificates and both nonces. ``sig_X`` is X's node Ed25519 signature over
``"shoal/v1/handshake-auth\\0" || role(X) || transcript`` (the label is the
handshake's signing context, :class:`~protocol._identity.SigningContext`); the
role byte stops a signature being reflected back at its author. Each side checks
the other's certificate (fleet, signature by the fleet root, role ``node``, not
the fleet root's own key, not revoked, not expired at the trust's ``now_ms``) as
soon as its Hello arrives, and the signature when its Auth arrives. Any failure is
sent to the peer as a :class:`HandshakeReject` (code + operator-readable detail)
before the local side raises, so both ends log *why*.

The initiator considers the session established once it has sent its Auth, so
the responder's refusal of that Auth arrives *after* the initiator's handshake:
the responder sends it encrypted, as record 0 under the session keys, and the
initiator believes a rejection only in that form. A plaintext
``HandshakeReject`` in place of a record can come from anyone on the path; it is
treated as a bare close (:class:`SessionClosed`, no reason text taken from it).

Keys: ``shared = X25519(eph_secret, peer_eph_public)`` (an all-zero result from
a low-order point is refused); ``BLAKE3-derive_key("shoal 2025 session keys
v1", shared || transcript)`` gives 64 bytes, split into the initiator->responder
and responder->initiator keys.

Records: after the handshake every frame body is
``AES-256-GCM(key_dir, nonce = 0^4 || counter_dir (64-bit BE),
plaintext = codec.encode(message))`` (``cryptography``'s AESGCM: AES-NI makes it
about 10x faster here than PyNaCl's bundled ChaCha20-Poly1305, 2095 vs 221 MiB/s).
Counters are implicit and start at 0, so a tampered, replayed, dropped or
reordered record fails authentication; that raises :class:`RecordError` (a
:class:`RemoteProtocolError`) and the session is dead for good (state ``CLOSED``)
- only this session.

Rekeying: each direction's key seals a bounded amount, then is replaced. Before
a record would take its key past ``rekey_records`` records (counting the update
itself; default :data:`DEFAULT_REKEY_RECORDS`, 2^20) or ``rekey_bytes`` of
plaintext (default :data:`DEFAULT_REKEY_BYTES`, 64 GiB), the sender seals a
:class:`KeyUpdate` (type 4, carrying the new epoch number) as the last record under
the old key, then switches to ``key' = BLAKE3-derive_key("shoal 2025 session key
update v1", key)`` with its counter back at 0; the receiver, on decrypting that
record, makes the same step. Each direction rekeys on its own, with no round trip;
the thresholds are the sender's policy, so the two ends need not agree on them.
The old key is dropped (Python cannot wipe ``bytes``; nothing keeps a reference),
and the derivation is one-way, so a key read from memory later does not open the
records sealed before the last update. Why these limits: nonces are counters, so
they never repeat under a key whatever the limits; what bounds a key is AES-GCM's
confidentiality advantage, about ``(blocks + records)^2 / 2^129``
(draft-irtf-cfrg-aead-limits): 64 GiB is 2^32 blocks, an advantage of about 2^-65,
below TLS 1.3's 2^-60 target (RFC 8446 5.5: 2^24.5 records of 16 KiB, ~22 GiB).
Integrity needs no limit here: one failed tag ends the session. 2^20 records bounds
the lifetime of a key on chatty sessions of small messages (gossip), where the
byte limit would take far longer to reach.

Copies on the record path are kept to the ones the work needs (measured with
``benchmarks/bench_transport.py``): a record is encrypted straight into one
buffer that already holds its length prefix (one write per record), and
received bytes are appended once to a receive buffer that records are
decrypted from in place (no per-frame slice copies); the consumed prefix is
dropped once per :meth:`SecureConnection.receive_data` call. A record of 64 KiB or
more is received into a buffer of its own, which the caller may read the socket
straight into (:meth:`SecureConnection.receive_buffer`); given ``buffers`` (the
agent's pool) that buffer and the record's plaintext (``decrypt_into``) come from it.

Randomness (the ephemeral secret, the nonce) is an input: ``protocol/`` has
none of its own.
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Callable

import blake3
import nacl.bindings
import nacl.exceptions
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ._codec import DEFAULT_MAX_FRAME, decode, encode, frame
from ._errors import (
    FrameTooLarge,
    LocalProtocolError,
    MalformedMessage,
    ProtocolError,
    RemoteProtocolError,
    SignatureError,
    UntrustedKey,
)
from ._handshake_types import (
    Auth,
    ConnectionRole,
    ConnectionState,
    ConnectionStatistics,
    HandshakeReject,
    Hello,
    KeyUpdate,
    RejectCode,
)
from ._identity import (
    Certificate,
    FleetTrust,
    SigningContext,
    SigningIdentity,
    check_node_certificate,
    signing_payload,
    verify_signature,
)

__all__ = [
    "HANDSHAKE_VERSION",
    "HANDSHAKE_MAX_FRAME",
    "Hello",
    "Auth",
    "HandshakeReject",
    "KeyUpdate",
    "DEFAULT_REKEY_RECORDS",
    "DEFAULT_REKEY_BYTES",
    "RejectCode",
    "HandshakeRejected",
    "RecordError",
    "SessionClosed",
    "ConnectionRole",
    "ConnectionState",
    "SecureConnection",
    "ConnectionStatistics",
    "check_node_certificate",
]

HANDSHAKE_VERSION = 1
#: Largest frame accepted before the handshake is complete: every handshake message
#: fits (a Hello with a 128-character fleet id and name is under 1.2 KiB, a
#: HandshakeReject's detail is cut to 1,000 characters).
HANDSHAKE_MAX_FRAME = 8 * 1024
_AEAD_TAG = 16
_NONCE_SIZE = 32
_KEY_CONTEXT = "shoal 2025 session keys v1"
_REKEY_CONTEXT = "shoal 2025 session key update v1"
#: Records one key seals at most (the KeyUpdate that retires it included).
DEFAULT_REKEY_RECORDS = 2**20
#: Plaintext bytes one key seals before it is replaced (2^32 AES blocks).
DEFAULT_REKEY_BYTES = 64 * 2**30
_TRANSCRIPT_LABEL = b"shoal-handshake-v1"
_AUTH_LABEL = SigningContext.HANDSHAKE
_LEN = _struct.Struct(">I")
_BIG_RECORD = 64 * 1024   # a record this long is received into a buffer of its own
_COUNTER = _struct.Struct(">4xQ")
_MAX_COUNTER = 2**64 - 1


class HandshakeRejected(RemoteProtocolError):
    """The peer refused our handshake; ``code`` and ``detail`` are its reason."""

    def __init__(self, code: RejectCode, detail: str) -> None:
        super().__init__(f"peer refused the handshake ({code.value}): {detail}")
        self.code = code
        self.detail = detail


class RecordError(RemoteProtocolError):
    """An encrypted record failed authentication: tampered, replayed or reordered."""


class SessionClosed(RemoteProtocolError):
    """The session ended without an authenticated reason: a plaintext
    ``HandshakeReject`` arrived where the first record was due. Anyone on the path
    can send one, so it is a bare close; its code and text are not believed."""


def _transcript(hello_i: bytes, hello_r: bytes) -> bytes:
    h = blake3.blake3(_TRANSCRIPT_LABEL)
    h.update(_LEN.pack(len(hello_i)))
    h.update(hello_i)
    h.update(_LEN.pack(len(hello_r)))
    h.update(hello_r)
    return h.digest()


def _auth_payload(role: ConnectionRole, transcript: bytes) -> bytes:
    return signing_payload(_AUTH_LABEL,
                           (b"I" if role is ConnectionRole.INITIATOR else b"R") + transcript)


class SecureConnection:
    """One end of a shoal session: handshake, then encrypted records.

    Feed received bytes to :meth:`receive_data` (it returns the messages they
    completed), send with :meth:`send`, and write whatever :meth:`data_to_send`
    returns to the stream. Any :class:`ProtocolError` closes the connection for
    good; after a handshake failure :meth:`data_to_send` still holds the
    :class:`HandshakeReject` to deliver before closing the stream.
    """

    __slots__ = (
        "role", "state", "peer_certificate", "max_frame", "_identity", "_certificate",
        "_trust", "_expected_peer", "_eph_secret", "_eph_public", "_nonce", "_rbuf",
        "_out", "_hello_i", "_hello_r", "_transcript", "_send_key", "_recv_key",
        "_send_ctr", "_recv_ctr", "_send_aead", "_recv_aead", "_peer_authed",
        "_records_sent", "_records_received",
        "_pt_sent", "_pt_received", "_wire_sent", "_wire_received", "_received_any",
        "_peer_eph", "failure", "rekey_records", "rekey_bytes", "_send_epoch",
        "_recv_epoch", "_send_key_bytes", "_big", "_big_fill", "_big_len", "_pool",
    )

    def __init__(self, *, role: ConnectionRole, identity: SigningIdentity,
                 certificate: Certificate, trust: FleetTrust, ephemeral_secret: bytes,
                 nonce: bytes, max_frame: int = DEFAULT_MAX_FRAME,
                 expected_peer: str | None = None,
                 rekey_records: int = DEFAULT_REKEY_RECORDS,
                 rekey_bytes: int = DEFAULT_REKEY_BYTES,
                 buffers: Callable[[int], bytearray] | None = None
                 ) -> None:
        if len(ephemeral_secret) != 32 or len(nonce) != _NONCE_SIZE:
            raise LocalProtocolError("the ephemeral secret and the nonce are 32 random bytes")
        if certificate.subject_key != identity.public_key:
            raise LocalProtocolError("our certificate does not name our own identity key")
        if max_frame <= _AEAD_TAG:
            raise LocalProtocolError("max_frame is too small to carry a record")
        if rekey_records < 2 or rekey_bytes < 1:
            raise LocalProtocolError("a key must seal at least 2 records (one of them the "
                                     "key update) and 1 byte")
        self.role = role
        self.state = ConnectionState.HANDSHAKE
        self.peer_certificate: Certificate | None = None
        self.max_frame = max_frame
        self.rekey_records = rekey_records
        self.rekey_bytes = rekey_bytes
        self._send_epoch = self._recv_epoch = 0
        self._send_key_bytes = 0   # plaintext bytes sealed under the current send key
        self._identity = identity
        self._certificate = certificate
        self._trust = trust
        self._expected_peer = expected_peer
        self._eph_secret = ephemeral_secret
        self._eph_public = nacl.bindings.crypto_scalarmult_base(ephemeral_secret)
        self._peer_eph = b""
        self._nonce = nonce
        self._rbuf = bytearray()   # received bytes not yet consumed as whole frames
        # a large record being received: its body, allocated once at its full length
        # when its header arrives, and how much of it has come (no regrowing buffer)
        self._big: bytearray | None = None
        self._big_fill = self._big_len = 0
        # where large record bodies and plaintexts come from: a bytearray of at least n
        # bytes that nothing else uses until this drops it (the agent's pool), or new ones
        self._pool = buffers
        self._out: list[bytes | bytearray] = []
        self._hello_i: bytes | None = None
        self._hello_r: bytes | None = None
        self._transcript = b""
        self._send_key = b""
        self._recv_key = b""
        self._send_ctr = 0
        self._recv_ctr = 0
        self._send_aead: AESGCM | None = None
        self._recv_aead: AESGCM | None = None
        self._peer_authed = False
        self._received_any = False
        #: (code, detail) of the failure that closed the handshake, ours or the peer's.
        self.failure: tuple[RejectCode, str] | None = None
        self._records_sent = self._records_received = 0
        self._pt_sent = self._pt_received = 0
        self._wire_sent = self._wire_received = 0
        if role is ConnectionRole.INITIATOR:
            self._hello_i = self._make_hello()
            self._emit(self._hello_i)

    # ------------------------------------------------------------------ public

    @property
    def peer_id(self) -> str | None:
        """The authenticated peer's node id (None until the handshake is done)."""
        if self.state is not ConnectionState.ESTABLISHED or self.peer_certificate is None:
            return None
        return self.peer_certificate.subject_id

    @property
    def established(self) -> bool:
        return self.state is ConnectionState.ESTABLISHED

    @property
    def frame_limit(self) -> int:
        """The largest frame the peer may send now: :data:`HANDSHAKE_MAX_FRAME` until
        the handshake is complete, ``max_frame`` after it."""
        if self.state is ConnectionState.ESTABLISHED:
            return self.max_frame
        return HANDSHAKE_MAX_FRAME

    @property
    def buffered(self) -> int:
        """Received bytes held waiting for the rest of a frame (below 4 +
        :attr:`frame_limit` between calls of :meth:`receive_data`)."""
        return len(self._rbuf) + self._big_fill

    def data_to_send(self) -> bytes | bytearray:
        """Bytes to write to the stream now (possibly empty), in one buffer.

        A single pending record is handed over as is (no copy); the caller owns it.
        """
        if not self._out:
            return b""
        out: bytes | bytearray = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out = []
        self._wire_sent += len(out)
        return out

    def send(self, msg: object) -> None:
        """Encrypt ``msg`` as the next record; fetch the bytes with :meth:`data_to_send`."""
        if type(msg) is KeyUpdate:
            raise LocalProtocolError("key updates are the session's own business")
        self.send_bytes(encode(msg))

    def send_bytes(self, plaintext: bytes | bytearray) -> None:
        if self.state is not ConnectionState.ESTABLISHED:
            raise LocalProtocolError(f"cannot send records in state {self.state.value}")
        if len(plaintext) + _AEAD_TAG > self.max_frame:
            raise LocalProtocolError(f"message of {len(plaintext)} bytes exceeds the "
                                     f"{self.max_frame}-byte frame limit")
        if self._send_ctr and (self._send_ctr + 1 >= self.rekey_records or
                               self._send_key_bytes + len(plaintext) > self.rekey_bytes):
            self._update_send_key()
        self._seal(plaintext)
        self._records_sent += 1
        self._pt_sent += len(plaintext)

    def _seal(self, plaintext: bytes | bytearray) -> None:
        if self._send_ctr >= _MAX_COUNTER:
            raise LocalProtocolError("record counter exhausted; open a new session")
        assert self._send_aead is not None
        size = len(plaintext) + _AEAD_TAG
        rec = bytearray(_LEN.size + size)
        _LEN.pack_into(rec, 0, size)
        with memoryview(rec) as view:
            self._send_aead.encrypt_into(_COUNTER.pack(self._send_ctr), plaintext, None,
                                         view[_LEN.size:])
        self._send_ctr += 1
        self._send_key_bytes += len(plaintext)
        self._out.append(rec)

    def _update_send_key(self) -> None:
        """Seal a KeyUpdate as the old key's last record, then step to the next key."""
        self._send_epoch += 1
        self._seal(encode(KeyUpdate(self._send_epoch)))
        self._send_key = _next_key(self._send_key)
        self._send_aead = AESGCM(self._send_key)
        self._send_ctr = self._send_key_bytes = 0

    @property
    def plaintext_received(self) -> int:
        """Plaintext bytes of the records received so far (key updates not counted)."""
        return self._pt_received

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[object]:
        """Consume bytes from the stream; return the messages of complete records.

        Raises a :class:`ProtocolError` (the connection is then ``CLOSED``):
        :class:`HandshakeRejected` when the peer refused us,
        :class:`UntrustedKey` / :class:`SignatureError` / :class:`MalformedMessage`
        when we refused the peer, :class:`RecordError` for a bad record.
        """
        if self.state is ConnectionState.CLOSED:
            raise LocalProtocolError("the session is closed")
        self._wire_received += len(data)
        out: list[object] = []
        buf = self._rbuf
        pos = 0
        try:
            if self._big is not None:
                data = self._fill_big(data, out)
            buf += data
            with memoryview(buf) as view:
                while len(buf) - pos >= _LEN.size:
                    (length,) = _LEN.unpack_from(buf, pos)
                    limit = self.frame_limit
                    if length > limit:
                        raise FrameTooLarge(length, limit)
                    end = pos + _LEN.size + length
                    if end > len(buf):
                        if length >= _BIG_RECORD and self.state is ConnectionState.ESTABLISHED:
                            self._big = (bytearray(length) if self._pool is None
                                         else self._pool(length))
                            self._big_len = length
                            self._big_fill = len(buf) - pos - _LEN.size
                            self._big[:self._big_fill] = view[pos + _LEN.size:]
                            pos = len(buf)
                        break
                    with view[pos + _LEN.size:end] as body:
                        pos = end
                        if self.state is ConnectionState.HANDSHAKE:
                            self._handshake_frame(bytes(body))
                        else:
                            msg = self._record(body)
                            if msg is not _NO_MESSAGE:
                                out.append(msg)
            del buf[:pos]
        except HandshakeRejected as exc:
            self.failure = (exc.code, exc.detail)
            self._close()
            raise
        except ProtocolError as exc:
            if self.state is ConnectionState.HANDSHAKE:
                self.failure = (_code_for(exc), str(exc))
                self._reject(*self.failure)
            self._close()
            raise
        return out

    def close(self) -> None:
        self._close()

    def _fill_big(self, data: bytes | bytearray | memoryview, out: list[object]
                  ) -> bytes | bytearray | memoryview:
        """Copy received bytes into the large record being received; once it is whole,
        open it. The bytes after it."""
        big = self._big
        assert big is not None
        n = min(len(data), self._big_len - self._big_fill)
        view = memoryview(data)
        big[self._big_fill:self._big_fill + n] = view[:n]
        self._big_fill += n
        self._open_big(out)
        return view[n:]

    def _open_big(self, out: list[object]) -> None:
        big = self._big
        if big is None or self._big_fill < self._big_len:
            return
        size = self._big_len
        self._big, self._big_fill, self._big_len = None, 0, 0
        with memoryview(big) as whole, whole[:size] as body:
            msg = self._record(body)
        if msg is not _NO_MESSAGE:
            out.append(msg)

    def receive_buffer(self) -> memoryview | None:
        """Where the next received bytes go while a large record is being received (a
        writable view of its missing part; None otherwise): read the socket into it,
        then call :meth:`received_into` with the count, instead of
        :meth:`receive_data` (no copy of the record's bytes)."""
        if self._big is None or self.state is not ConnectionState.ESTABLISHED:
            return None
        return memoryview(self._big)[self._big_fill:self._big_len]

    def received_into(self, n: int) -> list[object]:
        """``n`` bytes were written at the start of :meth:`receive_buffer`'s view; the
        messages that completed (as :meth:`receive_data`)."""
        if self._big is None or not 0 <= n <= self._big_len - self._big_fill:
            raise LocalProtocolError("received_into: no large record takes that many bytes")
        self._wire_received += n
        self._big_fill += n
        out: list[object] = []
        try:
            self._open_big(out)
        except ProtocolError:
            self._close()
            raise
        return out

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            state=self.state, records_sent=self._records_sent,
            records_received=self._records_received, plaintext_bytes_sent=self._pt_sent,
            plaintext_bytes_received=self._pt_received, wire_bytes_sent=self._wire_sent,
            wire_bytes_received=self._wire_received, send_epoch=self._send_epoch,
            recv_epoch=self._recv_epoch,
        )

    # ------------------------------------------------------------------ handshake

    def _make_hello(self) -> bytes:
        return encode(Hello(self._trust.fleet_id, HANDSHAKE_VERSION, self._eph_public,
                            self._certificate, self._nonce))

    def _emit(self, body: bytes) -> None:
        self._out.append(frame(body, self.max_frame))

    def _reject(self, code: RejectCode, detail: str) -> None:
        body = encode(HandshakeReject(code, detail[:1000]))
        if self.role is ConnectionRole.RESPONDER and self._send_aead is not None:
            # the initiator already considers the session open: it believes only a
            # rejection sealed with the session key (record 0), never a plaintext one
            sealed = self._send_aead.encrypt(_COUNTER.pack(self._send_ctr), body, None)
            self._send_ctr += 1
            self._emit(sealed)
            return
        self._emit(body)

    def _handshake_frame(self, body: bytes) -> None:
        msg = decode(body, HANDSHAKE_MAX_FRAME)
        if isinstance(msg, HandshakeReject):
            raise HandshakeRejected(msg.code, msg.detail)
        if self.peer_certificate is None:
            if not isinstance(msg, Hello):
                raise MalformedMessage(f"expected Hello, got {type(msg).__name__}")
            self._on_hello(msg, body)
        elif not isinstance(msg, Auth):
            raise MalformedMessage(f"expected Auth, got {type(msg).__name__}")
        else:
            self._on_auth(msg)

    def _on_hello(self, hello: Hello, body: bytes) -> None:
        if hello.version != HANDSHAKE_VERSION:
            raise _VersionMismatch(f"peer speaks handshake version {hello.version}, "
                                   f"we speak {HANDSHAKE_VERSION}")
        if hello.fleet_id != self._trust.fleet_id:
            raise _WrongFleet(f"peer belongs to fleet {hello.fleet_id!r}, "
                              f"this node to {self._trust.fleet_id!r}")
        if len(hello.ephemeral_key) != 32 or len(hello.nonce) != _NONCE_SIZE:
            raise MalformedMessage("Hello: ephemeral key and nonce must be 32 bytes")
        check_node_certificate(hello.certificate, self._trust)
        peer_id = hello.certificate.subject_id
        if peer_id == self._certificate.subject_id:
            raise _UnexpectedPeer("connected to ourselves")
        if self._expected_peer is not None and peer_id != self._expected_peer:
            raise _UnexpectedPeer(f"dialled node {self._expected_peer} but node {peer_id} "
                                  f"answered")
        self.peer_certificate = hello.certificate
        self._peer_eph = hello.ephemeral_key
        if self.role is ConnectionRole.RESPONDER:
            self._hello_i = body
            self._hello_r = self._make_hello()
            self._emit(self._hello_r)
            self._derive()
            self._emit(encode(Auth(self._identity.sign(
                _auth_payload(ConnectionRole.RESPONDER, self._transcript)))))
        else:
            self._hello_r = body
            self._derive()

    def _derive(self) -> None:
        assert self._hello_i is not None and self._hello_r is not None
        self._transcript = _transcript(self._hello_i, self._hello_r)
        try:
            shared = nacl.bindings.crypto_scalarmult(self._eph_secret, self._peer_eph)
        except nacl.exceptions.RuntimeError:
            raise MalformedMessage("peer's ephemeral key is a low-order point") from None
        if shared == bytes(32):
            raise MalformedMessage("peer's ephemeral key is a low-order point")
        okm = blake3.blake3(shared + self._transcript,
                            derive_key_context=_KEY_CONTEXT).digest(length=64)
        i2r, r2i = okm[:32], okm[32:]
        if self.role is ConnectionRole.INITIATOR:
            self._send_key, self._recv_key = i2r, r2i
        else:
            self._send_key, self._recv_key = r2i, i2r
        self._send_aead = AESGCM(self._send_key)
        self._recv_aead = AESGCM(self._recv_key)

    def _on_auth(self, auth: Auth) -> None:
        assert self.peer_certificate is not None
        peer_role = (ConnectionRole.RESPONDER if self.role is ConnectionRole.INITIATOR
                     else ConnectionRole.INITIATOR)
        try:
            verify_signature(self.peer_certificate.subject_key,
                             _auth_payload(peer_role, self._transcript), auth.signature)
        except SignatureError:
            raise SignatureError(f"node {self.peer_certificate.subject_id} did not prove "
                                 f"it holds the key of its certificate (bad handshake "
                                 f"signature)") from None
        if self.role is ConnectionRole.INITIATOR:
            self._emit(encode(Auth(self._identity.sign(
                _auth_payload(ConnectionRole.INITIATOR, self._transcript)))))
        self.state = ConnectionState.ESTABLISHED

    # ------------------------------------------------------------------ records

    def _record(self, body: memoryview) -> object:
        assert self._recv_aead is not None
        pt: bytes | memoryview
        size = len(body) - _AEAD_TAG
        try:
            if self._pool is not None and size >= _BIG_RECORD:   # into a pooled buffer
                pt = memoryview(self._pool(size))[:size]
                self._recv_aead.decrypt_into(_COUNTER.pack(self._recv_ctr), body, None, pt)
                pt = pt.toreadonly()     # what is decoded from it (Pieces.data) is a view
            else:
                pt = self._recv_aead.decrypt(_COUNTER.pack(self._recv_ctr), body, None)
        except InvalidTag:
            if (not self._received_any and self.role is ConnectionRole.INITIATOR
                    and _is_plain_reject(bytes(body), self.max_frame)):
                # A refusal of our Auth comes sealed (below); a plaintext one may
                # come from anyone on the path: a bare close, its text not believed.
                raise SessionClosed(f"node {self.peer_id} closed the session") from None
            raise RecordError(f"record {self._recv_ctr} from node {self.peer_id} failed "
                              f"authentication (tampered, replayed or reordered); "
                              f"closing the session") from None
        self._recv_ctr += 1
        first = not self._received_any
        self._received_any = True
        msg = decode(pt, self.max_frame)
        if type(msg) is KeyUpdate:
            if msg.epoch != self._recv_epoch + 1:
                raise RecordError(f"node {self.peer_id} announced key epoch {msg.epoch} "
                                  f"after epoch {self._recv_epoch}; closing the session")
            self._recv_epoch = msg.epoch
            self._recv_key = _next_key(self._recv_key)
            self._recv_aead = AESGCM(self._recv_key)
            self._recv_ctr = 0
            return _NO_MESSAGE
        self._records_received += 1
        self._pt_received += len(pt)
        if first and self.role is ConnectionRole.INITIATOR and isinstance(msg, HandshakeReject):
            # The responder refused our Auth after we considered the session open; the
            # refusal is sealed with the session key, so it is the peer's own.
            raise HandshakeRejected(msg.code, msg.detail)
        return msg

    def _close(self) -> None:
        self.state = ConnectionState.CLOSED
        self._rbuf = bytearray()
        self._big, self._big_fill, self._big_len = None, 0, 0
        self._send_key = self._recv_key = self._eph_secret = b""
        self._send_aead = self._recv_aead = None


class _VersionMismatch(MalformedMessage):
    pass


class _WrongFleet(UntrustedKey):
    pass


class _UnexpectedPeer(UntrustedKey):
    pass


_NO_MESSAGE = object()   # what _record returns for a record that was the session's own


def _next_key(key: bytes) -> bytes:
    return blake3.blake3(key, derive_key_context=_REKEY_CONTEXT).digest(length=32)


def _code_for(exc: ProtocolError) -> RejectCode:
    if isinstance(exc, _WrongFleet):
        return RejectCode.WRONG_FLEET
    if isinstance(exc, _UnexpectedPeer):
        return RejectCode.UNEXPECTED_PEER
    if isinstance(exc, _VersionMismatch):
        return RejectCode.BAD_VERSION
    if isinstance(exc, UntrustedKey):
        return RejectCode.UNTRUSTED_KEY
    if isinstance(exc, SignatureError):
        return RejectCode.BAD_SIGNATURE
    return RejectCode.MALFORMED


def _is_plain_reject(body: bytes, max_frame: int) -> bool:
    try:
        return isinstance(decode(body, max_frame), HandshakeReject)
    except RemoteProtocolError:
        return False

