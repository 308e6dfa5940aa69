"""Every OpenSSL build gets a layout, with nothing done by hand.

A harvester meets builds nobody profiled: every security update of a host or a
guest is one.  :class:`LayoutResolver` gives each build (keyed by its ELF
build-id) a :class:`BuildLayout`, resolved in this order (``--resolve`` picks
the methods: :data:`METHODS`):

1. **known** (:data:`SHIPPED`, :data:`CACHED`) — a profile shipped with
   tls-bridge, or one in the profile cache (made or confirmed here earlier);
2. **calibrated here** (:data:`CALIBRATED`, method ``calibrate``) — a shared
   library this host can load: calibrated at first sight in the background
   (:mod:`bridge.harvest.sandbox`: a child with no network, no root, no
   capabilities, a time limit), the profile cached by build-id;
3. **inferred** (:data:`INFERRED`, method ``candidates``) — otherwise (a library
   inside a VM guest, an executable with OpenSSL linked in, a calibration that
   failed): the layouts of the known builds, the same version series first, are
   *candidates*.  Secrets read through a candidate are never published until the
   candidate is confirmed on a live connection (:mod:`bridge.harvest.confirm`:
   cryptographic relations between the secrets and what the process holds); the
   first confirmed candidate becomes the build's profile, cached.  A candidate
   that fails is dropped with its reason;
4. **learned** (:data:`LEARNED`, method ``learn``) — when there is no candidate,
   or none confirmed: the layout is learned from the build's own connections
   (:mod:`bridge.harvest.learn`).  The harvester finds each connection's object
   (the ``SSL *`` of a hooked call holding a client random the wire or a sensor
   named), derives its secrets from the process's memory (TLS 1.3: the RFC 8446
   §7.1 pair and the transcript hash OpenSSL keeps; TLS 1.2: the master key whose
   key block is live) and hands them to :meth:`LayoutResolver.learn`; once
   connections of both TLS versions agree on one unambiguous layout, read back
   on every one of them, it becomes the build's profile, cached.  Until then
   nothing is published (state :data:`LEARNING`); the connections learned from
   that are still open are published then.

A TLS 1.2 connection is confirmed by decrypting its first client record, which
the harvester captured on the wire (:attr:`LayoutResolver.first_records`, fed
by the wire readers), so a connection that ended before it was looked at
confirms too; without it, from the key block live in memory.

TLS 1.2 and TLS 1.3 are confirmed separately for an inferred layout (their
fields differ): each version's secrets are held back until one connection of
that version confirmed them.  A learned layout is confirmed for both by the
connections it was learned from.

The state is visible: :meth:`BuildLayout.status` (the harvesters' logs,
summaries and ``--status`` file) says where each layout came from, how long
resolving took and how many connections were seen meanwhile; a build that
carries TLS traffic while nothing can be harvested from it is an error state.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from bridge.errors import ProfileError
from bridge.harvest.calibrate import Sample
from bridge.secrets import TLS12, TLS13, ConnectionSecrets
from bridge.harvest.confirm import Evidence, confirm
from bridge.harvest.first_record import FirstRecords
from bridge.harvest.profile import SHIPPED_DIR, Profile, ProfileStore

#: How a build's layout was resolved.
SHIPPED, CACHED, CALIBRATED, INFERRED, LEARNED = (
    "shipped", "cached", "calibrated here", "inferred and confirmed", "learned")
#: Resolution states.
READY, CALIBRATING, CONFIRMING, LEARNING, FAILED = "ready", "calibrating", "confirming", "learning", "failed"
#: Resolution methods, in order (``--resolve``).
METHODS = ("calibrate", "candidates", "learn")
#: A candidate that fails confirmation on this many connections is dropped.
CANDIDATE_STRIKES = 2
#: How long a TLS 1.2 confirmation waits for the connection's first record from the wire
#: reader (only while a version is not confirmed yet: once per build and version).
RECORD_WAIT = 0.3

_SERIES = re.compile(r"(\d+)\.(\d+)\.(\d+)")


def version_key(version: str | None) -> tuple[int, int, int] | None:
    match = _SERIES.search(version or "")
    return None if match is None else (int(match[1]), int(match[2]), int(match[3]))


def order_candidates(profiles: Iterable[Profile], version: str | None) -> list[Profile]:
    """Known layouts as candidates: the same major.minor series first, then by
    version distance; layouts with identical fields once (the nearest build's)."""
    wanted = version_key(version)

    def distance(profile: Profile) -> tuple[int, int, int]:
        key = version_key(profile.openssl_version)
        if wanted is None or key is None:
            return (1, 1 << 20, 0)
        same_series = key[:2] == wanted[:2]
        return (0 if same_series else 1, abs((key[0] * 100 + key[1]) - (wanted[0] * 100 + wanted[1])),
                abs(key[2] - wanted[2]))

    seen: set[tuple] = set()
    ordered = []
    for profile in sorted(profiles, key=distance):
        signature = tuple(sorted(profile.fields.items()))
        if signature not in seen:
            seen.add(signature)
            ordered.append(profile)
    return ordered


@dataclass(slots=True)
class BuildLayout:
    """One build's layout and how it was (or is being) resolved."""

    build_id: str
    library: str
    version: str | None
    state: str
    origin: str | None = None
    profile: Profile | None = None
    candidates: list[Profile] = field(default_factory=list)
    #: TLS versions whose fields are known good (a profile made against this build: both).
    confirmed_versions: set[int] = field(default_factory=set)
    first_seen: float = field(default_factory=time.monotonic)
    resolved_after: float | None = None
    #: Connections of this build seen before its layout was ready (published none of them).
    missed: int = 0
    #: Connections whose secrets were held back until their version was confirmed.
    held: int = 0
    confirmations: int = 0
    #: Learning attempts whose connections did not agree on one layout.
    learn_failures: int = 0
    #: Confirmations that could not decide yet (keys not live), tried again.
    retried: int = 0
    #: candidate build-id → (strikes, last reason)
    rejected: dict[str, tuple[int, str]] = field(default_factory=dict)
    reason: str = ""
    #: Said once in the log: traffic while nothing is harvested.
    alarmed: bool = False
    #: Learning: the connections learned from so far, with the process each lives in.
    learning: list[tuple[int, Sample]] = field(default_factory=list)

    def profiles(self) -> list[Profile]:
        """The layouts to read this build through now: its profile, or the candidates."""
        if self.profile is not None:
            return [self.profile]
        return list(self.candidates) if self.state == CONFIRMING else []

    @property
    def harvestable(self) -> bool:
        """Worth hooking: secrets can be read, or (learning) the hooks' ``SSL *`` are needed."""
        return self.state in (READY, CONFIRMING, LEARNING)

    def status(self) -> dict[str, object]:
        body: dict[str, object] = {
            "build_id": self.build_id, "library": self.library, "version": self.version, "state": self.state,
            "origin": self.origin, "missed_before_ready": self.missed, "held_unconfirmed": self.held,
        }
        if self.resolved_after is not None:
            body["resolved_after_s"] = round(self.resolved_after, 3)
        if self.state == CONFIRMING:
            body["candidates"] = [p.build_id for p in self.candidates]
        if self.state == LEARNING or self.origin == LEARNED:
            body["learned_from"] = len(self.learning) if self.state == LEARNING else self.profile.made.get("samples")  # type: ignore[union-attr]
        if self.confirmed_versions:
            body["confirmed"] = sorted({TLS12: "TLS1.2", TLS13: "TLS1.3"}.get(v, hex(v)) for v in self.confirmed_versions)
        if self.rejected:
            body["rejected"] = {build: reason for build, (_, reason) in self.rejected.items()}
        if self.reason:
            body["reason"] = self.reason
        if self.profile is not None and self.profile.made.get("method"):
            body["method"] = self.profile.made["method"]
        return body

    def describe(self) -> str:
        """One line for the log."""
        what = f"{self.library} (build-id {self.build_id}, {self.version or 'version unknown'})"
        if self.state == READY:
            took = (f" in {self.resolved_after:.2f} s" if self.resolved_after is not None
                    and self.origin in (CALIBRATED, INFERRED) else "")
            missed = f", {self.missed} connections missed meanwhile" if self.missed else ""
            return f"{what}: layout {self.origin}{took}{missed}"
        if self.state == CALIBRATING:
            return f"{what}: no profile; calibrating it here (sandboxed)"
        if self.state == CONFIRMING:
            names = ", ".join(p.openssl_version or p.build_id[:12] for p in self.candidates)
            return f"{what}: no profile; {len(self.candidates)} candidate layouts ({names}) to confirm on a live connection"
        if self.state == LEARNING:
            return f"{what}: no profile ({self.reason}); learning the layout from live connections"
        return f"{what}: NOTHING CAN BE HARVESTED: {self.reason}"


class LayoutResolver:
    """Layouts of the builds the harvesters meet, resolved in the background."""

    def __init__(self, store: ProfileStore, *, cache_dir: str | None = None,
                 methods: Iterable[str] = METHODS, calibrator: Callable[[str], Profile] | None = None,
                 log: Callable[[str], None] = lambda text: None) -> None:
        self.store = store
        self.cache_dir = cache_dir
        self.methods = tuple(methods)
        unknown = set(self.methods) - set(METHODS)
        if unknown:
            raise ProfileError(f"unknown resolution methods {sorted(unknown)}: use {', '.join(METHODS)}")
        if calibrator is None:
            from bridge.harvest.sandbox import calibrate_sandboxed

            calibrator = calibrate_sandboxed
        self.calibrator = calibrator
        self.log = log
        #: TLS 1.2 connections' first client records, fed by the harvesters' wire readers.
        self.first_records = FirstRecords()
        #: Why learning cannot work in this harvester (no hooks, no client randoms), or None.
        self.learning_needs: str | None = None
        self.layouts: dict[str, BuildLayout] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # --- resolving ---------------------------------------------------------------------------

    def layout(self, build_id: str, library: str, version: str | None, *, loadable_path: str | None = None) -> BuildLayout:
        """The build's layout; starts resolving it at first sight (never blocks)."""
        build_id = build_id.lower()
        with self._lock:
            layout = self.layouts.get(build_id)
            if layout is not None:
                if layout.version is None and version is not None:
                    layout.version = version
                return layout
            profile = self.store.get(build_id)
            if profile is not None:
                origin = SHIPPED if _is_shipped(profile, self.store) else CACHED
                layout = BuildLayout(build_id, library, version or profile.openssl_version, READY, origin, profile,
                                     confirmed_versions={TLS12, TLS13}, resolved_after=0.0)
            elif loadable_path is not None and "calibrate" in self.methods:
                layout = BuildLayout(build_id, library, version, CALIBRATING)
                thread = threading.Thread(target=self._calibrate, args=(layout, loadable_path),
                                          name=f"calibrate-{build_id[:8]}", daemon=True)
                self._threads.append(thread)
                thread.start()
            else:
                layout = BuildLayout(build_id, library, version, FAILED)
                self._to_candidates(layout, "cannot be loaded here" if loadable_path is None else "not calibrated")
            self.layouts[build_id] = layout
        self.log(layout.describe())
        return layout

    def _calibrate(self, layout: BuildLayout, path: str) -> None:
        started = time.monotonic()
        try:
            profile = self.calibrator(path)
        except ProfileError as exc:
            with self._lock:
                self._to_candidates(layout, f"calibration failed: {exc}")
            self.log(f"{layout.library}: calibration failed ({exc}); " + layout.describe())
            return
        if profile.build_id != layout.build_id:
            with self._lock:
                self._to_candidates(layout, "the file calibrated is another build (replaced on disk?)")
            self.log(layout.describe())
            return
        profile.made["resolution"] = "calibrated automatically at first sight"
        self._save(profile)
        with self._lock:
            layout.profile, layout.origin, layout.state = profile, CALIBRATED, READY
            layout.confirmed_versions = {TLS12, TLS13}
            layout.version = layout.version or profile.openssl_version
            layout.resolved_after = time.monotonic() - layout.first_seen
            layout.reason = ""
        self.log(layout.describe() + f" (calibration {time.monotonic() - started:.2f} s)")

    def _to_candidates(self, layout: BuildLayout, why: str) -> None:
        if "candidates" not in self.methods:
            self._to_learning(layout, f"{why}; candidate layouts not enabled (--resolve)")
            return
        layout.candidates = [p for p in order_candidates(self.store, layout.version) if p.build_id not in layout.rejected]
        if layout.candidates:
            layout.state, layout.reason = CONFIRMING, why
        else:
            self._to_learning(layout, f"{why}; no known layout to try")

    def _to_learning(self, layout: BuildLayout, why: str) -> None:
        if "learn" in self.methods and self.learning_needs:
            layout.state, layout.reason = FAILED, f"{why}; learning its layout needs {self.learning_needs}"
        elif "learn" in self.methods:
            layout.state, layout.reason = LEARNING, why
        else:
            layout.state, layout.reason = FAILED, f"{why}; learning not enabled (--resolve)"

    def wait(self, timeout: float) -> None:
        """Let calibrations started so far finish (at most ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        for thread in list(self._threads):
            thread.join(max(0.0, deadline - time.monotonic()))

    def _save(self, profile: Profile) -> None:
        self.store.add(profile)
        if self.cache_dir:
            try:
                profile.save(self.cache_dir)
            except OSError as exc:
                self.log(f"warning: cannot cache the profile of {profile.build_id} in {self.cache_dir}: {exc}")

    # --- confirming ------------------------------------------------------------------------------

    def vouch(self, layout: BuildLayout, profile: Profile, secrets: ConnectionSecrets,
              evidence: Callable[[], Evidence], *, wait: bool = True) -> bool | None:
        """May ``secrets``, read through ``profile`` (the build's profile or a candidate),
        be published?  Confirms them on this connection when the layout is not known
        good for their version; a confirmed candidate becomes the build's profile.
        True: publish; False: the layout does not hold here (a strike against a
        candidate); None: not yet decidable (the connection's keys are not live
        yet): try this connection again a moment later, nothing counted.

        A TLS 1.2 connection is confirmed by its first client record when the wire
        reader captured it (waiting up to :data:`RECORD_WAIT` for it unless ``wait``
        is False: the caller is the thread that feeds the records), else from memory."""
        with self._lock:
            if _same_layout(profile, layout.profile) and secrets.tls_version in layout.confirmed_versions:
                return True
        captured = None
        if secrets.tls_version == TLS12:
            # The record decides, whether the connection is alive or not, at the cost of one
            # decryption (a memory search reads all the target's writable memory).  The wire
            # reader may not have handed it over yet (a capture polls, a hook comes first).
            captured = (self.first_records.wait(secrets.client_random, RECORD_WAIT) if wait
                        else self.first_records.get(secrets.client_random))
        if captured is not None:
            verdict = confirm(secrets, Evidence(b"", None, None, lambda needles: set(), captured))
        else:
            verdict = confirm(secrets, evidence())
        if not verdict.ok and not verdict.conclusive:
            with self._lock:
                layout.confirmations += 1
                layout.retried += 1
            return None
        with self._lock:
            layout.confirmations += 1
            if verdict.ok:
                if layout.profile is None:
                    if profile not in layout.candidates:
                        return False  # dropped meanwhile
                    # the version is this build's (None when unknown, as in a guest), never the candidate's
                    confirmed = Profile(layout.build_id, layout.version, layout.library,
                                        dict(profile.fields), {
                                            "method": f"inferred from the layout of {profile.openssl_version} "
                                                      f"(build-id {profile.build_id}), confirmed on a live connection",
                                            "candidate": profile.build_id,
                                            "resolution": "inferred and confirmed",
                                            "confirmed_by": verdict.reason,
                                            "date": time.strftime("%Y-%m-%d", time.gmtime()),
                                        })
                    layout.profile, layout.origin, layout.state = confirmed, INFERRED, READY
                    layout.resolved_after = time.monotonic() - layout.first_seen
                    layout.candidates = []
                    layout.reason = ""
                    newly = True
                elif not _same_layout(profile, layout.profile):
                    return False  # another candidate won meanwhile
                else:
                    newly = False
                first_of_version = secrets.tls_version not in layout.confirmed_versions
                layout.confirmed_versions.add(secrets.tls_version)  # type: ignore[arg-type]
            else:
                strikes, _ = layout.rejected.get(profile.build_id, (0, ""))
                layout.rejected[profile.build_id] = (strikes + 1, verdict.reason)
                dropped = False
                if layout.profile is None and strikes + 1 >= CANDIDATE_STRIKES and profile in layout.candidates:
                    layout.candidates.remove(profile)
                    dropped = True
                    if not layout.candidates:
                        self._to_learning(layout, "no candidate layout confirmed: " + "; ".join(
                            f"{build[:12]}: {why}" for build, (_, why) in layout.rejected.items()))
                layout.held += 1
        if verdict.ok:
            if newly:
                self._save(layout.profile)  # type: ignore[arg-type]
                self.log(layout.describe() + f"; {verdict.reason}")
            elif first_of_version:
                self.log(f"{layout.library} (build-id {layout.build_id}): {verdict.reason}")
            return True
        self.log(f"{layout.library} (build-id {layout.build_id}): layout {profile.openssl_version or 'of this build'} "
                 f"({profile.build_id[:12]}) not confirmed: {verdict.reason}"
                 + ("; candidate dropped" if dropped else "")
                 + (f"; {layout.describe()}" if layout.state == FAILED or (dropped and layout.state == LEARNING) else ""))
        return False

    # --- learning --------------------------------------------------------------------------------

    def learn(self, layout: BuildLayout, pid: int, sample: Sample) -> Profile | None:
        """A connection of a build being learned (its secrets derived, its memory
        copied: :func:`bridge.harvest.learn.observe`).  Once enough connections of both
        TLS versions agree on one layout, it becomes the build's profile (origin
        :data:`LEARNED`, cached) and is returned; until then None."""
        from bridge.harvest import learn

        with self._lock:
            if layout.state != LEARNING or any(s.ssl == sample.ssl and s.client_random == sample.client_random
                                               for _, s in layout.learning):
                return None
            same = [entry for entry in layout.learning if entry[1].version == sample.version]
            if len(same) >= learn.LEARN_MAX_SAMPLES // 2:
                if not layout.learn_failures:
                    return None  # enough of this version (each holds a copy of its memory): waiting for the other
                layout.learning.remove(same[0])  # they did not agree: a rolling window of this version
            layout.learning.append((pid, sample))
            samples = [s for _, s in layout.learning]
            if not learn.ready(samples):
                layout.reason = learn.missing(samples)
                return None
        try:
            profile = learn.learn_profile(layout.build_id, layout.version, layout.library, samples)
        except ProfileError as exc:
            # One connection may contradict the others (its object reused by the next connection
            # before it was copied, under load): without it, do the rest agree?
            profile, outlier = None, None
            for index in range(len(samples) - 1, -1, -1):
                rest = samples[:index] + samples[index + 1:]
                if not learn.ready(rest):
                    continue
                try:
                    profile = learn.learn_profile(layout.build_id, layout.version, layout.library, rest)
                except ProfileError:
                    continue
                outlier, samples = samples[index], rest
                break
            if profile is None:
                with self._lock:
                    layout.learn_failures += 1
                    if layout.learn_failures >= 4 * learn.LEARN_MAX_SAMPLES:
                        layout.state = FAILED
                        layout.reason = f"learning failed after {layout.learn_failures} tries: {exc}"
                    else:
                        layout.reason = f"{learn.missing(samples)}; not yet unambiguous: {exc}"
                self.log(f"{layout.library} (build-id {layout.build_id}): {layout.reason}"
                         + (f"; {layout.describe()}" if layout.state == FAILED else ""))
                return None
            with self._lock:
                layout.learning = [entry for entry in layout.learning if entry[1] is not outlier]
            self.log(f"{layout.library} (build-id {layout.build_id}): one connection contradicted the others "
                     "and was left out of learning")
        with self._lock:
            if layout.state != LEARNING:
                return None
            layout.profile, layout.origin, layout.state = profile, LEARNED, READY
            layout.confirmed_versions = {TLS12, TLS13}
            layout.resolved_after = time.monotonic() - layout.first_seen
            layout.reason = ""
        self._save(profile)
        self.log(layout.describe() + f" from {len(samples)} connections; {profile.made['confirmed_by']}")
        return profile

    def recovered(self, layout: BuildLayout) -> None:
        """A connection counted as missed was harvested after all (learned from, then read)."""
        with self._lock:
            layout.missed = max(0, layout.missed - 1)

    def saw_connection(self, layout: BuildLayout) -> None:
        """A connection of this build was seen (a hook, a ClientHello it owns)."""
        with self._lock:
            if layout.state in (CALIBRATING, LEARNING, FAILED):
                layout.missed += 1
            alarm = layout.state == FAILED and not layout.alarmed
            if alarm:
                layout.alarmed = True
        if alarm:
            self.log(f"ERROR: TLS traffic of {layout.library} (build-id {layout.build_id}) is not harvested: "
                     f"{layout.reason}")

    def status(self) -> list[dict[str, object]]:
        with self._lock:
            return [layout.status() for layout in self.layouts.values()]


def _same_layout(profile: Profile, other: Profile | None) -> bool:
    """The same fields (a candidate and the profile confirmed from it)."""
    return other is not None and (profile is other or profile.fields == other.fields)


def _is_shipped(profile: Profile, store: ProfileStore) -> bool:
    return getattr(store, "origins", {}).get(profile.build_id) == str(SHIPPED_DIR)
