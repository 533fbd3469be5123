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
