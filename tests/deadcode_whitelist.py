"""Names the dead-code check (tests/test_dead_code.py, vulture) must not report: each is used,
but not by a call that vulture can see. Read by vulture only, never imported.

Keep an entry only with its reason; remove it as soon as the name goes.
"""
# ruff: noqa
# D-Bus members: called by the bus library when a caller asks for them.
Attach, Detach, ListDevices, Reload, SetAutoAttach, Restart, Set
Version, JackRunning, JackSampleRate, JackBufferSize, AutoAttach
RequestRelease, Priority, ApplicationName, ApplicationDeviceName     # ReserveDevice1
# dbus-next's Unmarshaller reads `endian`; MessageBus calls `_create_unmarshaller` (dbuslib.py)
_.endian, _._create_unmarshaller
# The listener protocol of jacklink.JackLink: called by name (`_tell("link_up", ...)`).
link_up, link_lost, link_param, link_connect, link_registration
# Fields of C structs (csrc/rtcore.h) written from Python for the C code to read.
_.in_buf, _.out_buf, _.mute_capture, _.capture_latency, _.playback_latency
# A getter's return type, read by the bus library to learn the property's D-Bus type.
_.__annotations__
# The asyncio task watching a worker: held so that it is not garbage-collected while it runs.
_._watcher
# Error names of the D-Bus contract (DESIGN.md §2) that no code path raises yet.
DeviceBusy, NotPermitted, Internal
# Counted for the hotplug tests' child in a udev namespace (read through a script it runs).
_.events_seen
# logging reads its module flag `raiseExceptions` (the worker turns it off: engine/worker.py).
_.raiseExceptions
