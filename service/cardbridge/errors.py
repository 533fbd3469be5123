"""Typed errors of the public contract (DESIGN.md §2), free of any D-Bus library.

The api layer maps each class to `org.cardbridge.CardBridge1.Error.<Name>` with its one-line
message; anything else becomes `Error.Internal`. Raised from the main process only.
"""

from __future__ import annotations

from .names import ERROR_PREFIX


class CardBridgeError(Exception):
    """Base class: `name` is the last element of the D-Bus error name."""

    name = "Internal"

    def __init__(self, message: str):
        # One line, always: a caller sees exactly this text.
        super().__init__(" ".join(str(message).split()))

    @property
    def dbus_name(self) -> str:
        return f"{ERROR_PREFIX}.{self.name}"


class NoSuchDevice(CardBridgeError):
    name = "NoSuchDevice"


class NoSuchBridge(CardBridgeError):
    name = "NoSuchBridge"


class AlreadyAttached(CardBridgeError):
    name = "AlreadyAttached"


class InvalidArgument(CardBridgeError):
    name = "InvalidArgument"


class DeviceBusy(CardBridgeError):
    name = "DeviceBusy"


class NotPermitted(CardBridgeError):
    name = "NotPermitted"


class Internal(CardBridgeError):
    name = "Internal"
