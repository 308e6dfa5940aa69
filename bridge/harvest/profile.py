"""Per-build OpenSSL struct-offset profiles: one JSON file per ELF build-id.

A profile says where, starting from an ``SSL *`` (the first argument of every
``SSL_*`` function), each secret lives in that exact build.  A field is a
*path*: a list of offsets where every step but the last dereferences a
pointer.  ``[0x160]`` is ``ssl + 0x160``; ``[0x918, 0x50]`` is
``*(ssl + 0x918) + 0x50`` (``ssl->session->master_key`` in 3.0).  On OpenSSL
3.2+ the ``SSL *`` of a TLS connection points at an ``SSL_CONNECTION`` whose
first member is the ``SSL`` base object, so the same paths apply.

Fields (all paths from the ``SSL *``):

=============================  ==============================================
``version``                    negotiated version, u32 (0x0303, 0x0304)
``client_random``              32 bytes
``session``                    pointer to the ``SSL_SESSION``
``master_key``                 TLS 1.2 master secret, 48 bytes (via session)
``master_key_length``          its length, size_t (via session)
``cipher_id``                  ``SSL_CIPHER.id`` (0x0300XXXX) via the session
``handshake_secret``           TLS 1.3, hash-length bytes
``master_secret``              TLS 1.3
``client_app_traffic_secret``  TLS 1.3, CLIENT_TRAFFIC_SECRET_0 until a KeyUpdate
``server_app_traffic_secret``  TLS 1.3, SERVER_TRAFFIC_SECRET_0 until a KeyUpdate
``exporter_master_secret``     TLS 1.3, EXPORTER_SECRET
=============================  ==============================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bridge.errors import ProfileError

PROFILE_FORMAT = 1
FIELDS = (
    "version",
    "client_random",
    "session",
    "master_key",
    "master_key_length",
    "cipher_id",
    "handshake_secret",
    "master_secret",
    "client_app_traffic_secret",
    "server_app_traffic_secret",
    "exporter_master_secret",
)
REQUIRED_FIELDS = frozenset({"version", "client_random", "session", "master_key", "master_key_length",
                             "handshake_secret", "client_app_traffic_secret", "server_app_traffic_secret"})
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "profiles"
#: Where profiles calibrated, confirmed or learned on this host are kept.
DEFAULT_PROFILE_DIR = "/var/lib/tls-bridge/profiles"
#: The profile cache's default may be moved with this environment variable (tests, containers).
PROFILE_CACHE_ENV = "TLS_BRIDGE_PROFILE_CACHE"


def default_profile_cache() -> str:
    return os.environ.get(PROFILE_CACHE_ENV) or DEFAULT_PROFILE_DIR


@dataclass(frozen=True, slots=True)
class Profile:
    build_id: str
    openssl_version: str | None
    library: str
    fields: dict[str, tuple[int, ...]]
    made: dict[str, object] = field(default_factory=dict)

    def path(self, name: str) -> tuple[int, ...] | None:
        return self.fields.get(name)

    def to_json(self) -> str:
        body = {
            "format": PROFILE_FORMAT,
            "build_id": self.build_id,
            "openssl_version": self.openssl_version,
            "library": self.library,
            "fields": {name: [f"{step:#x}" for step in self.fields[name]] for name in FIELDS if name in self.fields},
            "made": self.made,
        }
        return json.dumps(body, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, *, source: str = "profile") -> Profile:
        try:
            body = json.loads(text)
            if body.get("format") != PROFILE_FORMAT:
                raise ProfileError(f"{source}: profile format {body.get('format')!r}, expected {PROFILE_FORMAT}")
            fields = {name: tuple(int(step, 16) for step in steps) for name, steps in body["fields"].items()}
            profile = cls(str(body["build_id"]).lower(), body.get("openssl_version"), str(body["library"]), fields,
                          dict(body.get("made") or {}))
        except ProfileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProfileError(f"{source}: not a valid profile ({type(exc).__name__}: {exc})") from None
        unknown = set(fields) - set(FIELDS)
        missing = REQUIRED_FIELDS - set(fields)
        if unknown or missing:
            raise ProfileError(f"{source}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}")
        if any(not steps or any(step < 0 or step > 1 << 20 for step in steps) for steps in fields.values()):
            raise ProfileError(f"{source}: field offsets out of range")
        return profile

    def save(self, directory: str | os.PathLike[str]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{self.build_id}.json"
        path.write_text(self.to_json())
        return path


class MissingProfileError(ProfileError):
    """No profile for a build: the message names the build, its version and the fix."""

    def __init__(self, build_id: str, binary: str, version: str | None) -> None:
        self.build_id = build_id
        self.binary = binary
        self.version = version
        how = (f"tls-bridge profile calibrate --libssl {binary}" if "libssl" in os.path.basename(binary)
               else f"tls-bridge profile calibrate --pid PID --keylog CLIENT_KEYLOG  (a process running {binary})")
        super().__init__(
            f"no OpenSSL profile for {binary} (build-id {build_id}, {version or 'version string not found'}); "
            f"make one with: {how}"
        )


class ProfileStore:
    """Profiles by build-id: the ones shipped with tls-bridge, then the directories given."""

    def __init__(self, directories: Iterable[str | os.PathLike[str]] = (), *, shipped: bool = True) -> None:
        self._profiles: dict[str, Profile] = {}
        #: build-id → the directory its profile came from
        self.origins: dict[str, str] = {}
        self.errors: list[str] = []
        for directory in ([SHIPPED_DIR] if shipped else []) + [Path(d) for d in directories]:
            self._load_dir(Path(directory))

    def _load_dir(self, directory: Path) -> None:
        if not directory.is_dir():
            return
        for path in sorted(directory.glob("*.json")):
            if path.name.startswith("gnutls-"):
                continue  # what loading a GnuTLS build taught (bridge.harvest.gnutls), not an OpenSSL profile
            try:
                profile = Profile.from_json(path.read_text(), source=str(path))
            except (ProfileError, OSError) as exc:
                self.errors.append(str(exc))
                continue
            self._profiles[profile.build_id] = profile
            self.origins[profile.build_id] = str(directory)

    def __len__(self) -> int:
        return len(self._profiles)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._profiles.values())

    def get(self, build_id: str) -> Profile | None:
        return self._profiles.get(build_id.lower())

    def require(self, build_id: str, binary: str, version: str | None) -> Profile:
        profile = self.get(build_id)
        if profile is None:
            raise MissingProfileError(build_id, binary, version)
        return profile

    def add(self, profile: Profile) -> None:
        self._profiles[profile.build_id] = profile
