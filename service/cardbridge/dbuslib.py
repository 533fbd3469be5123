"""The service side's only door to the D-Bus library (dbus-next).

Every other module imports D-Bus names from here, so the library can be swapped in one place.
Runs in the main (asyncio) process only.
"""

from __future__ import annotations

from dbus_next import BusType, DBusError, Message, MessageFlag, MessageType, Variant  # noqa: F401
from dbus_next.aio import MessageBus  # noqa: F401
from dbus_next.constants import PropertyAccess, RequestNameReply, NameFlag  # noqa: F401
from dbus_next.errors import InterfaceNotFoundError  # noqa: F401
from dbus_next.introspection import Node  # noqa: F401
from dbus_next.service import ServiceInterface, dbus_property, method, signal  # noqa: F401
from dbus_next.signature import SignatureTree  # noqa: F401


OBJECT_MANAGER = "org.freedesktop.DBus.ObjectManager"


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
