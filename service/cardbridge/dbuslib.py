"""The service side's only door to the D-Bus library (dbus-next).

Every other module imports D-Bus names from here, so the library can be swapped in one place.
Runs in the main (asyncio) process only.

Inbound size limit: dbus-next decodes a whole message in the event loop before anyone sees it,
in pure Python, at about 10 µs per element: one 32 MiB call of one-byte variants to a member
everyone may call (Introspect) kept the service from answering anybody for 86 s (measured with
benchmarks/large_call.py). No message the service needs comes near INBOUND_LIMIT, so every
connection of the service (`MessageBus` here) reads a larger one off the socket without
decoding its body, and hands on a stand-in: a method call gets the error
org.freedesktop.DBus.Error.LimitsExceeded, a reply becomes that error for the caller waiting for
it, a signal becomes one nobody listens to. (dbus-next is no longer developed, so the private
Unmarshaller this subclasses will not change under us; dbus-fast, its maintained fork, decodes
in compiled code but still in the loop, and would need the same limit.)
"""

from __future__ import annotations

import struct

from dbus_next import BusType, DBusError, Message, MessageFlag, MessageType, Variant  # noqa: F401
from dbus_next._private.unmarshaller import MarshallerStreamEndError, Unmarshaller
from dbus_next.aio import MessageBus as _LibraryMessageBus
from dbus_next.constants import PropertyAccess, RequestNameReply, NameFlag  # noqa: F401
from dbus_next.errors import InterfaceNotFoundError  # noqa: F401
from dbus_next.introspection import Node  # noqa: F401
from dbus_next.service import ServiceInterface, dbus_property, method, signal  # noqa: F401
from dbus_next.signature import SignatureTree  # noqa: F401

_HEADER_FIELDS = SignatureTree._get("a(yv)").types[0]


OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"
INBOUND_LIMIT = 64 * 1024          # bytes of one incoming message, header and body
LIMITS_EXCEEDED = "org.freedesktop.DBus.Error.LimitsExceeded"
_SKIP_CHUNK = 1 << 20


class _LimitedUnmarshaller(Unmarshaller):
    """dbus-next's reader, except that a message over INBOUND_LIMIT is skipped, not decoded."""

    def __init__(self, stream, sock=None):
        super().__init__(stream, sock)
        self._skipping: dict | None = None     # what is known of the message being skipped
        self._skip_left = 0

    def _unmarshall(self):
        if self._skipping is None:
            self.offset = 0
            self.read(16, prefetch=True)
            fmt = "<" if self.buf[0] == ord("l") else ">"
            body_len, serial, header_len = struct.unpack_from(fmt + "III", self.buf, 4)
            head = 16 + header_len + (-header_len & 7)
            if head + body_len <= INBOUND_LIMIT:
                return super()._unmarshall()
            known = {"type": self.buf[1], "flags": self.buf[2], "serial": serial}
            if head <= INBOUND_LIMIT:            # the header is small: learn who asked what
                self.read(head, prefetch=True)   # (all of it, or we start again next time)
                self.endian = self.buf[0]
                self.offset = 12
                fields = self.read_argument(_HEADER_FIELDS)
                known.update({code: variant.value for code, variant in fields})
                self._skip_left = body_len
            else:
                self._skip_left = head + body_len - len(self.buf)
            self._skipping = known
            self.buf = bytearray()
            self.offset = 0
        while self._skip_left > 0:
            # Until the socket has nothing more for now. (Giving the loop a turn after every
            # chunk could strand the message's last bytes in the stream's buffer, where no
            # readable socket would ever call us back for them.)
            want = min(self._skip_left, _SKIP_CHUNK)
            got = len(self._read_some(want))
            self._skip_left -= got
            if got < want and self._skip_left > 0:
                raise MarshallerStreamEndError()
        self.message = _stand_in(self._skipping)

    def _read_some(self, n: int) -> bytes:
        if self.sock is not None:
            try:
                data, *_ = self.sock.recvmsg(n)
            except BlockingIOError:
                raise MarshallerStreamEndError() from None
        else:
            data = self.stream.read(n)
            if data is None:
                raise MarshallerStreamEndError()
        if data == b"":
            raise EOFError()
        return data


def _stand_in(known: dict) -> Message:
    """What the rest of the service sees of a message too large to decode."""
    kind, serial = known["type"], known["serial"]
    text = f"message larger than {INBOUND_LIMIT} bytes, not read"
    if kind == MessageType.METHOD_CALL.value and known.get(3) and known.get(7):
        call = Message(path=known.get(1) or "/", interface=known.get(2), member=known[3],
                       sender=known[7], serial=serial, flags=MessageFlag(known["flags"] & 7))
        call.too_large = True
        return call
    if kind in (MessageType.METHOD_RETURN.value, MessageType.ERROR.value) and known.get(5):
        return Message(message_type=MessageType.ERROR, error_name=LIMITS_EXCEEDED,
                       reply_serial=known[5], sender=known.get(7), signature="s", body=[text],
                       serial=serial)
    return Message(message_type=MessageType.SIGNAL, path="/", interface="org.cardbridge.Discarded",
                   member="TooLarge", serial=serial or 1)


def _refuse_too_large(msg: Message):
    if getattr(msg, "too_large", False):
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True
        return Message.new_error(msg, LIMITS_EXCEEDED,
                                 f"message larger than {INBOUND_LIMIT} bytes, not read")
    return None


class MessageBus(_LibraryMessageBus):
    """A bus connection of the service: messages over INBOUND_LIMIT are never decoded."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_message_handler(_refuse_too_large)

    def _create_unmarshaller(self):
        return _LimitedUnmarshaller(self._stream, self._sock if self._negotiate_unix_fd else None)


def read_only_property(name: str, signature: str, fetch):
    """A read-only D-Bus property `name` of type `signature` whose value is `fetch(self)`, for
    interfaces whose properties come from a table (the library finds them on the class)."""
    def getter(self):
        return fetch(self)
    getter.__name__ = name
    getter.__annotations__ = {"return": signature}
    return dbus_property(access=PropertyAccess.READ, name=name)(getter)


class ServiceBus(MessageBus):
    """The service's bus connection: ObjectManager signals come from the manager's path.

    dbus-next sends `InterfacesAdded`/`InterfacesRemoved` from the path of the object that
    appeared; the D-Bus specification (and GDBusObjectManagerClient, which matches on the
    manager's path) wants them from the object manager's own path. Objects below
    `object_manager_path` have theirs re-sent from there; anything else passes unchanged.
    """

    def __init__(self, *args, object_manager_path: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.object_manager_path = object_manager_path

    def send(self, msg: Message):
        root = self.object_manager_path
        if (root and msg.message_type == MessageType.SIGNAL and msg.interface == OBJECT_MANAGER
                and msg.path != root and msg.path.startswith(root + "/")):
            msg = Message.new_signal(path=root, interface=OBJECT_MANAGER, member=msg.member,
                                     signature=msg.signature, body=msg.body)
        return super().send(msg)
