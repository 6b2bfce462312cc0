"""The kombu internals the broker edge relies on are still the ones it was written against.

orchestrator/runtime/transport.py and runtime/fetch.py subclass kombu's Redis channel, QoS and
poller: they override private methods, copy two of them (`Channel._brpop_start` and
`_brpop_read`, QoS.restore_by_tag) with changes, and fetch.lua writes kombu's own record of an
unacknowledged message. pyproject.toml pins kombu to the series they were read in; these
checks fail when an installed kombu differs in what the edge depends on, before a worker does.
"""

from __future__ import annotations

import hashlib
import inspect
import textwrap
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kombu
import pytest
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
#: The kombu release the transport and the digests below were read against.
READ_IN = "5.7.0"
RECHECK = (
    "re-read orchestrator/runtime/transport.py and runtime/fetch.py (and store/lua/fetch.lua, "
    "which writes kombu's unacked record) against kombu {version}: carry any change of "
    "kombu's over to the copy or override, then update READ_IN, the digests in "
    "tests/unit/test_kombu_internals.py and the kombu pin in pyproject.toml"
)

Ch, QoS, Poller = kombu_redis.Channel, kombu_redis.QoS, kombu_redis.MultiChannelPoller


def digest(obj: Callable[..., Any]) -> str:
    return hashlib.sha256(textwrap.dedent(inspect.getsource(obj)).encode()).hexdigest()[:16]


def explain(what: str) -> str:
    return f"kombu's {what} is not what the broker edge was written against: " + RECHECK.format(
        version=kombu.__version__
    )


def test_the_installed_kombu_is_within_the_pin() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [Requirement(d) for d in deps if Requirement(d).name == "kombu"]
    assert pin.specifier, "kombu must be pinned to the series the transport was read in"
    assert Version(READ_IN) in pin.specifier, explain(f"pin {pin} (read in {READ_IN})")
    assert Version(kombu.__version__) in pin.specifier, explain(f"version {kombu.__version__}")


#: Bodies the edge copies (with its changes), or whose behaviour its overrides build on: a
#: changed body upstream means the copy or the override may now be wrong.
DIGESTS: dict[str, tuple[Callable[..., Any], str]] = {
    # copied: transport.Channel._brpop_start / _brpop_read, fetch.QoS.restore_by_tag
    "Channel._brpop_start": (Ch._brpop_start, "b8c18935c62e35af"),
    "Channel._brpop_read": (Ch._brpop_read, "f073dbcb18d71759"),
    "QoS.restore_by_tag": (QoS.restore_by_tag, "6224c9d1a3093fe9"),
    # the record fetch.lua writes in the same form, and what restores it
    "QoS.append": (QoS.append, "4b4b426ec8acbe0d"),
    "QoS.restore_visible": (QoS.restore_visible, "6da9e6fef02e7b58"),
    "Channel._do_restore_message": (Ch._do_restore_message, "0f81f342222253c5"),
    # the poller the wake connection registers with (transport._Poller)
    "MultiChannelPoller.on_readable": (Poller.on_readable, "412854aa5482bf1c"),
    "MultiChannelPoller._register": (Poller._register, "79b85d93f30c8f8f"),
}


@pytest.mark.parametrize("name", sorted(DIGESTS))
def test_the_bodies_the_edge_copies_or_builds_on_are_unchanged(name: str) -> None:
    obj, expected = DIGESTS[name]
    assert digest(obj) == expected, explain(f"{name} (source digest {digest(obj)})")


#: Signatures of what the edge overrides and calls with super() or directly.
SIGNATURES: dict[str, tuple[Callable[..., Any], str]] = {
    "Channel._brpop_start": (Ch._brpop_start, "(self, timeout=None)"),
    "Channel._brpop_read": (Ch._brpop_read, "(self, **options)"),
    "Channel._connparams": (Ch._connparams, "(self, asynchronous=False)"),
    "Channel._create_client": (Ch._create_client, "(self, asynchronous=False)"),
    "Channel._put": (Ch._put, "(self, queue, message, **kwargs)"),
    "Channel._receive_one": (Ch._receive_one, "(self, c)"),
    "Channel.close": (Ch.close, "(self)"),
    "Channel._q_for_pri": (Ch._q_for_pri, "(self, queue, pri)"),
    "Channel._get_message_priority": (Ch._get_message_priority, "(self, message, reverse=False)"),
    "Channel.conn_or_acquire": (Ch.conn_or_acquire, "(self, client=None)"),
    "Channel._flush_brpop_reauth": (Ch._flush_brpop_reauth, "(self)"),
    "virtual.Channel.basic_consume": (
        virtual.Channel.basic_consume,
        "(self, queue, no_ack, callback, consumer_tag, **kwargs)",
    ),
    "QoS._remove_from_indices": (QoS._remove_from_indices, "(self, delivery_tag, pipe=None)"),
    "virtual.QoS.append": (virtual.QoS.append, "(self, message, delivery_tag)"),
    "virtual.QoS.ack": (virtual.QoS.ack, "(self, delivery_tag)"),
    "Transport.register_with_event_loop": (
        kombu_redis.Transport.register_with_event_loop,
        "(self, connection, loop)",
    ),
}


@pytest.mark.parametrize("name", sorted(SIGNATURES))
def test_the_methods_the_edge_overrides_or_calls_keep_their_signatures(name: str) -> None:
    obj, expected = SIGNATURES[name]
    got = str(inspect.signature(obj))
    assert got == expected, explain(f"{name}{got}")


#: Attributes the edge reads or sets: on the class, or set by the constructor (its source).
CLASS_ATTRIBUTES = (
    "_in_poll",
    "_brpop_sent_at",
    "from_transport_options",
    "global_keyprefix",
    "unacked_key",
    "unacked_index_key",
    "ack_emulation",
    "sep",
    "priority_steps",
    "async_pool",
    "pool",
    "client",
)
KEY_LINES: dict[str, tuple[Callable[..., Any], tuple[str, ...]]] = {
    "Channel.__init__": (
        Ch.__init__,
        ("self._expires = {}", "self.handlers = {'BRPOP': self._brpop_read"),
    ),
    "MultiChannelPoller.__init__": (Poller.__init__, ("self._fd_to_chan = {}",)),
    # the transport's recoverable_*_errors decide whether a failed publish reconnects
    "Connection.ensure": (
        kombu.Connection.ensure,
        (
            "conn_errors = self.recoverable_connection_errors",
            "chan_errors = self.recoverable_channel_errors",
        ),
    ),
    "Connection.recoverable_connection_errors": (
        kombu.Connection.recoverable_connection_errors.func,
        ("self.get_transport_cls().recoverable_connection_errors",),
    ),
    "Connection.recoverable_channel_errors": (
        kombu.Connection.recoverable_channel_errors.func,
        ("self.get_transport_cls().recoverable_channel_errors",),
    ),
    # the health check reads what _brpop_start sets
    "MultiChannelPoller.maybe_check_brpop_health": (
        Poller.maybe_check_brpop_health,
        ("connection = channel._in_poll", "channel._brpop_sent_at"),
    ),
}


def test_the_attributes_the_edge_uses_are_there() -> None:
    missing = [a for a in CLASS_ATTRIBUTES if not hasattr(Ch, a)]
    assert not missing, explain(f"Channel without {missing}")
    for name, (obj, lines) in KEY_LINES.items():
        source = inspect.getsource(obj)
        gone = [line for line in lines if line not in source]
        assert not gone, explain(f"{name} without {gone}")
    options = set(kombu_redis.SentinelChannel.from_transport_options)
    assert {"master_name", "sentinel_kwargs"} <= options, explain("SentinelChannel's options")


def test_a_refusal_is_retried_as_it_is_and_only_a_lost_connection_reconnects() -> None:
    import redis

    from orchestrator.runtime.transport import SENTINEL_TRANSPORT, TRANSPORT

    for transport in (TRANSPORT, SENTINEL_TRANSPORT):
        conn = kombu.Connection("redis://127.0.0.1:1/0", transport=transport)
        try:
            oom = redis.exceptions.OutOfMemoryError("command not allowed when used memory")
            assert not isinstance(oom, conn.recoverable_connection_errors)
            assert isinstance(oom, conn.recoverable_channel_errors)
            lost = redis.ConnectionError("the broker connection was already released")
            assert isinstance(lost, conn.recoverable_connection_errors)
            assert isinstance(OSError(), conn.recoverable_connection_errors)
        finally:
            conn.release()
