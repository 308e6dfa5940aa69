"""Where a sensor's secrets come from, wired once for ``tls-bridge decrypt`` and
``tls-bridge run``: key log files (read once, or followed as they grow) and the
key feed, both filling one :class:`~bridge.keys.store.KeyStore`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from typing import TYPE_CHECKING

from bridge.errors import BridgeError, TransportError
from bridge.keys.follow import KeyLogFollower, into_store
from bridge.keys.keylog import KeyLogStats, read_keylog
from bridge.keys.store import KeyStore

if TYPE_CHECKING:  # imported where a feed is made: key logs alone do not pay for ZeroMQ's import
    from bridge.keyfeed.receiver import KeyFeedReceiver



@dataclass(frozen=True, slots=True)
class KeySettings:
    keylogs: list[str] = field(default_factory=list)
    #: follow the key logs as they grow (live); else read each once
    follow: bool = False
    feeds: list[str] = field(default_factory=list)
    server_key: str = ""
    client_cert: str = ""
    insecure: bool = False
    window: float = 600.0
    ttl: float = 600.0
    #: how long to wait for the feed's snapshots on start
    sync_timeout: float = 10.0
    #: ask the feed's harvesters for secrets the store lacks
    request: bool = True


class KeySources:
    """The store, and what fills it; :meth:`close` stops the followers and the feed."""

    def __init__(self, settings: KeySettings, *, store: KeyStore | None = None,
                 report: Callable[[str], None] = lambda line: None) -> None:
        """``report``: whole lines for the operator (warnings about key logs and the feed)."""
        self.settings = settings
        self.store = store if store is not None else KeyStore()
        self.report = report
        self.followers: list[KeyLogFollower] = []
        self.receiver: KeyFeedReceiver | None = None
        #: The feed's closing summary line (after :meth:`close`).
        self.receiver_summary: str | None = None

    @property
    def requests(self) -> bool:
        """Key requests go out (a feed to carry them, and asked for)."""
        return self.receiver is not None and self.settings.request

    def open(self) -> KeySources:
        settings = self.settings
        try:
            if settings.follow:
                self.followers = [KeyLogFollower(path, into_store(self.store)).start() for path in settings.keylogs]
            else:
                for path in settings.keylogs:
                    self._load(path)
            if settings.feeds:
                self.receiver = self._feed()
        except BaseException:
            self.close()
            raise
        return self

    def _load(self, path: str) -> None:
        stats = KeyLogStats()
        try:
            entries = read_keylog(path, stats)
        except OSError as exc:
            raise BridgeError(f"cannot read key log {path}: {exc.strerror}") from None
        for entry in entries:
            self.store.add_entry(entry)
        for warning in stats.warnings:
            self.report(f"tls-bridge: warning: {path}: {warning}")
        if stats.malformed > len(stats.warnings):
            self.report(f"tls-bridge: warning: {path}: {stats.malformed} malformed lines in all")
        if stats.unknown_labels:
            self.report(f"tls-bridge: {path}: {stats.unknown_labels} lines with unknown labels ignored")

    def _feed(self) -> KeyFeedReceiver:
        from bridge.keyfeed.receiver import KeyFeedReceiver
        from bridge.keyfeed.security import INSECURE_WARNING, check_endpoint, load_client
        from bridge.keyfeed.subscriber import SubscriberConfig

        settings = self.settings
        if settings.insecure:
            self.report(INSECURE_WARNING)
            client = None
        elif not settings.server_key or not settings.client_cert:
            raise TransportError(
                "the key feed is encrypted and authenticated: give --server-key SERVER.key and "
                "--client-cert CLIENT.key_secret (make them with 'tls-bridge keys gen-cert'), or --insecure for a lab")
        else:
            client = load_client(settings.server_key, settings.client_cert)
        config = SubscriberConfig(endpoints=[check_endpoint(e) for e in settings.feeds], window=settings.window,
                                  snapshot_timeout=settings.sync_timeout)
        receiver = KeyFeedReceiver(self.store, config, client, ttl=settings.ttl,
                                   on_failure=lambda text: self.report(f"tls-bridge: warning: key feed: {text}"))
        return receiver.start(sync_timeout=settings.sync_timeout)

    def stop_following(self) -> None:
        """The key logs' last lines are taken, and no more."""
        for follower in self.followers:
            follower.stop()
        self.followers = []

    def close(self) -> None:
        self.stop_following()
        if self.receiver is not None:
            self.receiver.close()
            self.receiver_summary = self.receiver.summary()
            self.receiver = None
