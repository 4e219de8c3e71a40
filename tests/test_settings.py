"""Settings: file, NOTIFIER_SETTINGS, NOTIFIER_<SECTION>__<KEY> overrides, clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from notifier.errors import SettingsError
from notifier.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_embedded_defaults_match_the_pinned_keys(tmp_path: Path) -> None:
    settings = Settings.from_mapping({}, base_dir=tmp_path)
    assert settings.templates.dir == tmp_path / "templates"
    assert (settings.smtp.host, settings.smtp.port, settings.smtp.tls) == (
        "127.0.0.1",
        1025,
        "none",
    )
    assert settings.smtp.verify is True
    assert settings.smtp.username is None
    assert settings.smtp.password is None
    assert settings.defaults.from_ is None
    assert settings.outbox.path == tmp_path / "var" / "outbox.sqlite3"
    assert settings.subscribers == ["smtp", "log"]
    assert settings.message_id_domain == "localhost"
    assert settings.limits.max_body_bytes == 1024 * 1024
    assert settings.limits.rate_per_minute == 0  # rate limits are opt-in


def test_project_settings_file_loads() -> None:
    settings = load_settings(ROOT / "settings.yml", environ={})
    assert settings.templates.dir == ROOT / "templates"
    assert settings.limits.rate_per_minute == 0  # `make run` does not throttle either


def test_relative_paths_resolve_against_the_settings_file(tmp_path: Path) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "s.yml").write_text("templates: {dir: tpl}\noutbox: {path: data/o.db}\n")
    settings = load_settings(folder / "s.yml", environ={})
    assert settings.templates.dir == folder / "tpl"
    assert settings.outbox.path == folder / "data" / "o.db"


def test_notifier_settings_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "other.yml").write_text("message_id_domain: mail.example.org\n")
    settings = load_settings(environ={"NOTIFIER_SETTINGS": str(tmp_path / "other.yml")})
    assert settings.message_id_domain == "mail.example.org"


def test_environment_overrides_parse_json_else_string(tmp_path: Path) -> None:
    (tmp_path / "s.yml").write_text("smtp: {host: a.example}\n")
    settings = load_settings(
        tmp_path / "s.yml",
        environ={
            "NOTIFIER_SMTP__HOST": "relay.internal",
            "NOTIFIER_SMTP__PORT": "2525",
            "NOTIFIER_SMTP__PASSWORD": "s3cret-from-env",
            "NOTIFIER_SUBSCRIBERS": '["smtp"]',
            "NOTIFIER_DEFAULTS__FROM": "Shop <shop@example.com>",
            "NOTIFIER_MESSAGE_ID_DOMAIN": "m.example.com",
        },
    )
    assert settings.smtp.host == "relay.internal"
    assert settings.smtp.port == 2525
    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == "s3cret-from-env"
    assert "s3cret-from-env" not in repr(settings)
    assert settings.subscribers == ["smtp"]
    assert settings.defaults.from_ == "Shop <shop@example.com>"
    assert settings.message_id_domain == "m.example.com"


@pytest.mark.parametrize(
    ("yaml_text", "environ", "named"),
    [
        ("smtp: {hots: x}\n", {}, "smtp.hots"),
        ("smpt: {host: x}\n", {}, "smpt"),
        ("", {"NOTIFIER_SMTP__HOTS": "x"}, "smtp.hots"),
        ("smtp: {port: lots}\n", {}, "smtp.port"),
        ("", {"NOTIFIER_SMTP__PORT": "[1]"}, "smtp.port"),
        ("smtp: {tls: maybe}\n", {}, "smtp.tls"),
        ("subscribers: smtp\n", {}, "subscribers"),
        ("limits: {max_body_bytes: -1}\n", {}, "limits.max_body_bytes"),
    ],
)
def test_unknown_keys_and_wrong_types_name_the_key(
    tmp_path: Path, yaml_text: str, environ: dict[str, str], named: str
) -> None:
    (tmp_path / "s.yml").write_text(yaml_text)
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path / "s.yml", environ=environ)
    message = str(caught.value)
    assert named in message
    assert "\n" not in message


def test_invalid_password_type_is_not_echoed(tmp_path: Path) -> None:
    (tmp_path / "s.yml").write_text("smtp: {password: [hunter2]}\n")
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path / "s.yml", environ={})
    assert "hunter2" not in str(caught.value)


def test_unreadable_and_malformed_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(tmp_path / "missing.yml", environ={})
    (tmp_path / "bad.yml").write_text("smtp: [unclosed\n")
    with pytest.raises(SettingsError, match="not valid YAML"):
        load_settings(tmp_path / "bad.yml", environ={})
    (tmp_path / "list.yml").write_text("- a\n- b\n")
    with pytest.raises(SettingsError, match="mapping"):
        load_settings(tmp_path / "list.yml", environ={})


@pytest.mark.parametrize(
    ("yaml_text", "secret"),
    [
        ("auth:\n  - {name: ci, token: SuperSecretToken123456}\n", "SuperSecretToken123456"),
        ("smtp: [host, {password: hunter2hunter2}]\n", "hunter2hunter2"),
        ("smtp: {password: {nested: s3cr3t-value}}\n", "s3cr3t-value"),
    ],
)
def test_errors_never_echo_secrets_of_a_malformed_section(
    tmp_path: Path, yaml_text: str, secret: str
) -> None:
    (tmp_path / "s.yml").write_text(yaml_text)
    with pytest.raises(SettingsError) as caught:
        load_settings(tmp_path / "s.yml", environ={})
    assert secret not in str(caught.value)


@pytest.mark.parametrize("password", ["12345678", "null", "true", '"quoted"', "[1]"])
def test_text_settings_take_the_environment_value_as_it_is(password: str) -> None:
    settings = load_settings(
        None, environ={"NOTIFIER_SMTP__PASSWORD": password, "NOTIFIER_SMTP__HOST": "10"}
    )
    assert settings.smtp.password is not None
    assert settings.smtp.password.get_secret_value() == password
    assert settings.smtp.host == "10"


@pytest.mark.parametrize(
    ("smtp", "allowed"),
    [
        ({"host": "relay.example.net", "username": "u"}, False),
        ({"host": "relay.example.net", "username": "u", "allow_plaintext_auth": True}, True),
        ({"host": "relay.example.net", "username": "u", "tls": "starttls"}, True),
        ({"host": "127.0.0.1", "username": "u"}, True),
        ({"host": "::1", "username": "u"}, True),
        ({"host": "relay.example.net"}, True),
    ],
)
def test_login_in_the_clear_to_a_remote_relay_is_refused(
    smtp: dict[str, Any], allowed: bool
) -> None:
    if allowed:
        Settings.from_mapping({"smtp": smtp})
    else:
        with pytest.raises(SettingsError, match="allow_plaintext_auth"):
            Settings.from_mapping({"smtp": smtp})


@pytest.mark.parametrize("variable", ["NOTIFIER_SMPT__HOST", "NOTIFIER_SUBSCRIBER", "NOTIFIER_X"])
def test_a_notifier_variable_that_names_no_setting_stops_start_up(variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        load_settings(None, environ={variable: "value"})


def test_booleans_numbers_and_lists_from_the_environment() -> None:
    settings = load_settings(
        None,
        environ={
            "NOTIFIER_DELIVERY__IN_SERVE": "false",
            "NOTIFIER_LIMITS__RENDER_TIMEOUT": "0.5",
            "NOTIFIER_LIMITS__ALLOWED_SENDERS": '["@example.com"]',
            "NOTIFIER_OUTBOX__URL": "postgresql://u:p@db:5432/notifier",
            "NOTIFIER_TEST_POSTGRES_URL": "postgresql://the-test-suite-s-own",
        },
    )
    assert settings.delivery.in_serve is False
    assert settings.limits.render_timeout == 0.5
    assert settings.limits.allowed_senders == ["@example.com"]
    assert settings.outbox.url is not None
    assert "u:p@" not in repr(settings)


def test_a_list_that_is_not_json_names_the_setting() -> None:
    with pytest.raises(SettingsError, match="subscribers") as caught:
        load_settings(None, environ={"NOTIFIER_SUBSCRIBERS": "smtp,log"})
    assert "\n" not in str(caught.value)
