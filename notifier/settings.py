"""Settings: ``settings.yml`` (or ``NOTIFIER_SETTINGS``) plus ``NOTIFIER_*`` overrides.

Precedence, lowest first: the defaults embedded in :class:`Settings`, the YAML file,
then ``NOTIFIER_<SECTION>__<KEY>`` environment variables, read by pydantic-settings'
YAML and environment sources. A list, mapping or section given in one variable is JSON
(``NOTIFIER_SUBSCRIBERS='["smtp"]'``); any other value is text that pydantic converts as
the setting's type says (``NOTIFIER_SMTP__PORT=2525`` is an int), and text settings
take it as it is (a password ``12345678`` or ``null`` stays that string). Unknown keys,
``NOTIFIER_*`` variables that name no setting, and wrong types raise
:class:`~notifier.errors.SettingsError` with a one-line message naming the key, so
start-up stops before anything is served; secrets are never echoed.

Relative paths (templates dir, outbox path, CA file) resolve against the folder of the
settings file; with no file they resolve against the working directory.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)
from pydantic_settings import SettingsError as SourceError

from notifier.errors import SettingsError

__all__ = [
    "ENV_PREFIX",
    "SETTINGS_ENV",
    "ApiToken",
    "AuthSettings",
    "DefaultsSettings",
    "DeliverySettings",
    "DkimKey",
    "DkimSettings",
    "IdempotencySettings",
    "LimitsSettings",
    "LogSettings",
    "OutboxSettings",
    "Settings",
    "SmtpSettings",
    "TemplatesSettings",
    "WebhookSubscriberSettings",
    "load_settings",
]

#: Environment variable naming the settings file.
SETTINGS_ENV = "NOTIFIER_SETTINGS"
#: Prefix of single-value overrides: ``NOTIFIER_<SECTION>__<KEY>``.
ENV_PREFIX = "NOTIFIER_"
#: The file used when ``NOTIFIER_SETTINGS`` is unset and it exists in the working dir.
DEFAULT_SETTINGS_FILE = "settings.yml"
#: Variables of the test suite and the benchmarks (``NOTIFIER_TEST_POSTGRES_URL``), not settings.
TEST_ENV_PREFIXES = ("NOTIFIER_TEST_", "NOTIFIER_BENCH_")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Section(BaseModel):
    # Unknown keys are typos or stale settings: refuse them instead of ignoring them.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TemplatesSettings(_Section):
    dir: Path = Path("templates")


class SmtpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(1025, ge=1, le=65535)
    tls: Literal["none", "starttls", "tls"] = "none"
    verify: bool = True
    ca_file: Path | None = None
    username: str | None = None
    password: SecretStr | None = None
    #: Seconds allowed for one whole delivery (connect, EHLO, MAIL, RCPT, DATA).
    timeout: float = Field(30.0, gt=0)
    #: Connections kept open to the relay and reused across messages.
    pool_size: int = Field(4, ge=1)
    #: Allow a login without TLS to a relay that is not on this machine (off: refused
    #: at start-up, since the password would cross the network in the clear).
    allow_plaintext_auth: bool = False

    @model_validator(mode="after")
    def _no_password_in_the_clear(self) -> SmtpSettings:
        remote = not _is_loopback(self.host)
        if self.tls == "none" and self.username and remote and not self.allow_plaintext_auth:
            raise ValueError(
                "smtp.username is set with smtp.tls: none for a relay that is not on this"
                " machine; use starttls or tls (or smtp.allow_plaintext_auth: true)"
            )
        return self


class DefaultsSettings(_Section):
    from_: str | None = Field(None, alias="from")


class OutboxSettings(_Section):
    #: The embedded SQLite outbox (one machine).
    path: Path = Path("var/outbox.sqlite3")
    #: ``postgresql://user:password@host:5432/db``: an outbox shared by every replica and
    #: worker. Wins over ``path``. A secret (it may hold a password): never echoed.
    url: SecretStr | None = None
    #: Connections each process keeps to PostgreSQL at most.
    pool_size: int = Field(10, ge=2, le=1000)

    @field_validator("url")
    @classmethod
    def _postgresql_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not url.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("must be a postgresql://user:password@host:5432/db URL")
        return url

    #: Seconds a finished (delivered or failed) message is kept; 0 keeps them forever.
    retention: float = Field(30 * 24 * 3600.0, ge=0)


class LimitsSettings(_Section):
    #: Largest accepted request body, in bytes; larger bodies get 413.
    max_body_bytes: int = Field(1024 * 1024, ge=1)
    #: Total bytes of the files attached to one ``multipart/form-data`` request (413
    #: above); the ``context`` part is capped by ``max_body_bytes`` as a JSON body is.
    max_attachment_bytes: int = Field(10 * 1024 * 1024, ge=0)
    #: Most files one request may attach (413 above).
    max_attachments: int = Field(100, ge=0, le=10_000)
    #: Most envelope recipients (To + Cc + Bcc) one message may have.
    max_recipients: int = Field(50, ge=1)
    #: Envelope senders allowed: addresses (``shop@example.com``), domains
    #: (``@example.com``) or ``*`` for any. Empty (the default): only ``defaults.from``, so
    #: that a service left on its defaults is not an open relay.
    allowed_senders: list[str] = Field(default_factory=list)
    #: Requests per minute per API token (per client address when no tokens are set);
    #: 0 (the default) turns this global limit off, so one busy caller is never slowed
    #: unless the operator asks for it. A token may carry its own rate (ApiToken).
    rate_per_minute: int = Field(0, ge=0)
    #: Requests a caller may make at once above the steady rate.
    rate_burst: int = Field(60, ge=1)
    #: Longest header value a template may produce, in UTF-8 octets (422 above). The
    #: email package's parser works in time that grows with the square of a value's
    #: length: this bounds what one request can cost.
    max_header_bytes: int = Field(4096, ge=256)
    #: Longest header block (all header lines together), in UTF-8 octets.
    max_header_block_bytes: int = Field(16384, ge=1024)
    #: Seconds one render may take before it is stopped and refused (422).
    render_timeout: float = Field(2.0, gt=0)
    #: Most characters one render (text and HTML parts together) may produce.
    max_rendered_chars: int = Field(4 * 1024 * 1024, ge=4096)
    #: Processes that run renders too slow for the event loop (started when first
    #: needed); when 8 per process are waiting, further slow renders get 503.
    render_processes: int = Field(2, ge=1, le=64)


class ApiToken(_Section):
    """One API caller: ``Authorization: Bearer <token>``."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9._-]+$")
    token: SecretStr
    scopes: list[Literal["send", "admin"]] = Field(min_length=1)
    #: This token's own requests per minute, applied even when ``limits.rate_per_minute``
    #: is 0; 0 exempts it from the global limit; None (unset) follows the global limit.
    rate_per_minute: int | None = Field(None, ge=0)
    #: This token's burst; None (unset) follows ``limits.rate_burst``.
    rate_burst: int | None = Field(None, ge=1)

    @field_validator("token")
    @classmethod
    def _long_enough(cls, token: SecretStr) -> SecretStr:
        if len(token.get_secret_value()) < 16:
            raise ValueError("tokens must be at least 16 characters")
        return token


class AuthSettings(_Section):
    #: No tokens: the API is open (a warning is logged at start-up).
    tokens: list[ApiToken] = Field(default_factory=list)


class DeliverySettings(_Section):
    """How the dispatcher retries transient failures (RFC 5321 4.5.4.1: configurable)."""

    max_attempts: int = Field(20, ge=1)
    #: First retry delay in seconds; each further one doubles, up to ``backoff_max``.
    backoff_initial: float = Field(10.0, gt=0)
    backoff_max: float = Field(3600.0, gt=0)
    #: After this many seconds since acceptance a message is not retried any more.
    max_age: float = Field(5 * 24 * 3600.0, gt=0)
    #: Seconds one subscriber may take for one message before it counts as failed.
    subscriber_timeout: float = Field(60.0, gt=0)
    #: Messages delivered at the same time by one process.
    concurrency: int = Field(32, ge=1)
    #: Seconds in-flight deliveries get to finish on shutdown before they are handed
    #: back to the outbox, due at once for any process that shares it (or the next start).
    shutdown_grace: float = Field(10.0, ge=0)
    #: Seconds a claimed delivery stays leased to its process without a renewal. The
    #: process renews it every third of that while the delivery runs, so a process that
    #: dies hands its work back after at most this long (plus one poll, 1 s).
    lease_seconds: float = Field(30.0, ge=1)
    #: Whether ``notifier serve`` delivers too. false: it only accepts (the API), and
    #: ``notifier worker`` processes sharing the outbox deliver.
    in_serve: bool = True


class IdempotencySettings(_Section):
    #: Seconds an Idempotency-Key is remembered; at least 24 hours.
    ttl: float = Field(24 * 3600.0, ge=24 * 3600.0)


class LogSettings(_Section):
    #: Write full recipient addresses in delivery log lines (off: only their count).
    include_addresses: bool = False
    #: ``json``: one JSON object per line, for log pipelines; ``text``: for people.
    format: Literal["json", "text"] = "json"
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class DkimKey(_Section):
    """One signing key: messages whose From domain is ``domain`` (or below it) are
    signed with it (``d=domain; s=selector``)."""

    domain: str = Field(min_length=1, pattern=r"^[^\s@]+$")
    selector: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
    #: A PEM file holding the RSA private key (``openssl genrsa -out dkim.pem 2048``).
    private_key_file: Path | None = None
    #: The PEM text itself, for ``NOTIFIER_DKIM__KEYS`` in containers. A secret.
    private_key: SecretStr | None = None

    @model_validator(mode="after")
    def _one_key_source(self) -> DkimKey:
        if (self.private_key_file is None) == (self.private_key is None):
            raise ValueError(f"{self.domain}: give either private_key_file or private_key")
        return self


class DkimSettings(_Section):
    #: No keys (the default): nothing is signed.
    keys: list[DkimKey] = Field(default_factory=list)


class WebhookSubscriberSettings(_Section):
    """A subscriber entry ``{name, type: webhook, url, secret}``: POST each message's
    summary as JSON, signed per Standard Webhooks (:mod:`notifier.subscribers.webhook`)."""

    #: The key of this subscriber's outcome in ``GET /v1/messages/<id>``.
    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    type: Literal["webhook"]
    #: An http:// or https:// URL; may hold a token, so never echoed.
    url: SecretStr
    #: ``whsec_<base64>``: the shared key of the HMAC-SHA256 signatures.
    secret: SecretStr

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: SecretStr) -> SecretStr:
        parts = urllib.parse.urlsplit(url.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return url

    @field_validator("secret")
    @classmethod
    def _standard_webhooks_secret(cls, secret: SecretStr) -> SecretStr:
        value = secret.get_secret_value()
        encoded = value.removeprefix("whsec_")
        try:
            # Padding optional, as receivers' libraries (standardwebhooks) accept it.
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            key = b""
        if not value.startswith("whsec_") or len(key) < 24:
            raise ValueError("must be whsec_ followed by at least 24 bytes in base64")
        return secret


#: The types a mapping in ``subscribers`` may have, and the settings of each.
SUBSCRIBER_TYPES: dict[str, type[_Section]] = {"webhook": WebhookSubscriberSettings}


class Settings(BaseSettings):
    """Every setting notifier reads, with its default."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )

    templates: TemplatesSettings = TemplatesSettings()
    smtp: SmtpSettings = SmtpSettings()
    defaults: DefaultsSettings = DefaultsSettings()
    outbox: OutboxSettings = OutboxSettings()
    limits: LimitsSettings = LimitsSettings()
    delivery: DeliverySettings = DeliverySettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    auth: AuthSettings = AuthSettings()
    log: LogSettings = LogSettings()
    dkim: DkimSettings = DkimSettings()
    #: Built-in names, dotted paths, or mappings with a ``type`` (``{name, type: webhook,
    #: url, secret}``).
    subscribers: list[str | WebhookSubscriberSettings] = Field(
        default_factory=lambda: list[str | WebhookSubscriberSettings](["smtp", "log"])
    )
    message_id_domain: str = Field("localhost", min_length=1, pattern=r"^[A-Za-z0-9.-]+$")

    @field_validator("subscribers", mode="before")
    @classmethod
    def _configured_subscribers(cls, entries: Any) -> Any:
        # Validated here, entry by entry, so that an error names the entry (its name or
        # its position) instead of pydantic's tour of every member of the union; and
        # never echoes a value, since url and secret are secrets.
        if not isinstance(entries, list):
            return entries
        validated: list[Any] = []
        names: set[str] = set()
        for position, entry in enumerate(entries):
            if isinstance(entry, Mapping):
                entry = _configured_subscriber(position, entry)
            elif not isinstance(entry, str):
                raise ValueError(f"entry {position + 1}: must be a name or a mapping with a type")
            name = entry.name if isinstance(entry, WebhookSubscriberSettings) else entry
            if isinstance(name, str):
                if name in names:
                    raise ValueError(f"{name!r} is listed twice")
                names.add(name)
            validated.append(entry)
        return validated

    @property
    def subscriber_names(self) -> list[str]:
        """The names in ``subscribers``: the keys of per-subscriber outcomes."""
        return [e if isinstance(e, str) else e.name for e in self.subscribers]

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, base_dir: Path | None = None) -> Settings:
        """Validate ``data`` and resolve relative paths against ``base_dir``."""
        try:
            settings = cls.model_validate(dict(data))
        except ValidationError as exc:
            raise SettingsError(_describe_validation_error(exc)) from None
        return settings.resolve_paths(base_dir or Path.cwd())

    def resolve_paths(self, base_dir: Path) -> Settings:
        """Return a copy whose relative paths are anchored at ``base_dir``."""

        def anchored(path: Path) -> Path:
            return path if path.is_absolute() else (base_dir / path)

        smtp = self.smtp
        if smtp.ca_file is not None:
            smtp = smtp.model_copy(update={"ca_file": anchored(smtp.ca_file)})
        dkim_keys = [
            key.model_copy(update={"private_key_file": anchored(key.private_key_file)})
            if key.private_key_file is not None
            else key
            for key in self.dkim.keys
        ]
        return self.model_copy(
            update={
                "dkim": self.dkim.model_copy(update={"keys": dkim_keys}),
                "templates": self.templates.model_copy(
                    update={"dir": anchored(self.templates.dir)}
                ),
                "outbox": self.outbox.model_copy(update={"path": anchored(self.outbox.path)}),
                "smtp": smtp,
            }
        )


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Load settings from ``path`` (else ``$NOTIFIER_SETTINGS``, else ``./settings.yml``
    when it exists, else the embedded defaults) and apply ``NOTIFIER_*`` overrides."""
    env = os.environ if environ is None else environ
    chosen = path if path is not None else env.get(SETTINGS_ENV)
    if chosen is None and Path(DEFAULT_SETTINGS_FILE).is_file():
        chosen = DEFAULT_SETTINGS_FILE
    _refuse_unknown_variables(env)
    data: dict[str, Any] = {}
    base_dir = Path.cwd()
    try:
        if chosen is not None:
            settings_file = Path(chosen)
            data = _read_yaml(settings_file)
            base_dir = settings_file.resolve().parent
        overrides = _EnvironmentSource(Settings, env)()
    except SourceError as exc:
        # pydantic-settings names the field it could not read from the environment.
        raise SettingsError(f"settings: {str(exc).splitlines()[0]}") from None
    return Settings.from_mapping(_merged(data, overrides), base_dir=base_dir)


class _EnvironmentSource(EnvSettingsSource):
    """pydantic-settings' environment source, over a given mapping instead of
    ``os.environ`` (the command line and tests pass their own)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        # Read in __init__ by the base class, through _load_env_vars: set it first.
        self._environ = {key.lower(): value for key, value in environ.items()}
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._environ


def _read_yaml(settings_file: Path) -> dict[str, Any]:
    # The YAML source skips a file that does not exist: a named file that cannot be read
    # is an error here, said in one line.
    if not os.access(settings_file, os.R_OK) or not settings_file.is_file():
        raise SettingsError(f"cannot read settings file {settings_file}")
    try:
        loaded: Any = YamlConfigSettingsSource(Settings, yaml_file=settings_file)()
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" line {where.line + 1}" if where is not None else ""
        raise SettingsError(f"settings file {settings_file}{line} is not valid YAML") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"cannot read settings file {settings_file}: {exc}") from None
    except (ValueError, TypeError):
        loaded = None  # a top-level list or scalar: the source cannot merge it
    if not isinstance(loaded, dict):
        raise SettingsError(f"settings file {settings_file} must hold a mapping at the top level")
    return loaded


def _refuse_unknown_variables(env: Mapping[str, str]) -> None:
    """A ``NOTIFIER_*`` variable that names no setting is a typo or a stale override; the
    environment source would pass over it in silence."""
    sections = {name.lower() for name in Settings.model_fields}
    for variable in sorted(env):
        upper = variable.upper()
        if not upper.startswith(ENV_PREFIX) or upper == SETTINGS_ENV:
            continue
        if upper.startswith(TEST_ENV_PREFIXES):
            continue
        keys = upper[len(ENV_PREFIX) :].lower().split("__")
        if not all(keys):
            raise SettingsError(f"{variable}: malformed override name")
        if keys[0] not in sections:
            raise SettingsError(f"settings: unknown key {'.'.join(keys)!r} (from {variable})")


def _merged(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` on top, section by section."""
    merged = dict(base)
    for key, value in override.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = _merged(current, value)
        else:
            merged[key] = value
    return merged


def _configured_subscriber(position: int, entry: Mapping[str, Any]) -> WebhookSubscriberSettings:
    name = entry.get("name")
    label = f"{name!r}" if isinstance(name, str) and name else f"entry {position + 1}"
    kind = entry.get("type")
    model = SUBSCRIBER_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        known = ", ".join(sorted(SUBSCRIBER_TYPES))
        raise ValueError(f"{label}: type must be one of: {known}")
    try:
        validated = model.model_validate(dict(entry))
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"])
        message = "unknown key" if error["type"] == "extra_forbidden" else _reason(error["msg"])
        raise ValueError(f"{label}: {key}: {message}") from None
    assert isinstance(validated, WebhookSubscriberSettings)  # the only type so far
    return validated


def _describe_validation_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    key = ".".join(str(part) for part in error["loc"]) or "settings"
    if error["type"] == "extra_forbidden":
        return f"settings: unknown key {key!r}"
    value = error.get("input")
    # Echo only a plain scalar, and nothing from sections that hold secrets: a whole
    # section of the wrong shape would otherwise print its password or tokens.
    scalar = value is None or isinstance(value, str | int | float | bool)
    secret_section = key.split(".")[0] in ("auth", "smtp", "outbox", "dkim", "subscribers")
    shown = f" (got {value!r})" if scalar and not secret_section else ""
    more = f"; {exc.error_count() - 1} more error(s)" if exc.error_count() > 1 else ""
    return f"settings: {key}: {_reason(error['msg'])}{shown}{more}"


def _reason(message: str) -> str:
    # pydantic prefixes what a validator raised with its own words.
    return message.removeprefix("Value error, ")
