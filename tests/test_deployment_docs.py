"""deploy/compose.yaml and docs/deployment.md name real commands, flags, settings and files.

No Docker engine runs here. These tests read the compose file as Docker Compose does (YAML
with anchors and merge keys, then ``${VARIABLE}`` interpolation), parse every ``notifier``
command in it with the real argument parser and load every service's ``NOTIFIER_*``
variables with the real settings loader, so a renamed flag or setting fails here rather
than in someone's deployment.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import yaml

from notifier.cli import _build_parser
from notifier.errors import SettingsError
from notifier.settings import ENV_PREFIX, SETTINGS_ENV, Settings, load_settings
from tests.test_docs import settings_keys

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
DEPLOYMENT_DOC = ROOT / "docs" / "deployment.md"

#: What the file's ``${...}`` placeholders get here, standing in for the secrets an
#: operator exports before ``docker compose up``.
TEST_VARIABLES = {
    "API_TOKEN": "test-api-token-0123456789abcdef",
    "POSTGRES_PASSWORD": "test-postgres-password",
}
LAYOUT = ("postgres", "migrate", "api-1", "api-2", "worker", "capture")
API_REPLICAS = ("api-1", "api-2")

# Compose's interpolation: $$ is a literal $, then $NAME, ${NAME} and ${NAME<op><arg>}
# with op one of :- - :? ? :+ +. Any other $ is an error for Compose, and here.
_PLACEHOLDER = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<invalid>))"
)


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with its placeholders replaced as Compose would, given ``variables``."""

    def substitute(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        if match["invalid"] is not None:
            raise AssertionError(f"invalid interpolation at {text[match.start() :][:40]!r}")
        name = match["named"] or match["braced"]
        op, arg = match["op"], match["arg"] or ""
        value = variables.get(name)
        is_set = value is not None and (value != "" or not (op or "").startswith(":"))
        if op in (":+", "+"):
            return arg if is_set else ""
        if is_set:
            assert value is not None
            return value
        if op in (":-", "-"):
            return arg
        raise AssertionError(f"{name} is not set ({arg or 'no message'})")

    return _PLACEHOLDER.sub(substitute, text)


def interpolated(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [interpolated(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: interpolated(value, variables) for key, value in node.items()}
    return node


@cache
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    result: dict[str, Any] = interpolated(loaded, TEST_VARIABLES)
    return result


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def argv(service: dict[str, Any]) -> list[str]:
    """The service's command as an argument list (Compose splits a string like a shell)."""
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def parse_notifier(args: list[str]) -> argparse.Namespace:
    """``notifier ARGS`` parsed by notifier's own parser; a bad command fails the test."""
    assert args[:1] == ["notifier"], f"not a notifier command: {args}"
    parser = _build_parser()
    # Spelled out in full: argparse would also take a prefix (--smtp-h for --smtp-host),
    # which stops working as soon as another option starts the same way.
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                subparser.allow_abbrev = False
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return parser.parse_args(args[1:])
    except SystemExit:
        pytest.fail(f"{shlex.join(args)}: {errors.getvalue().strip()}")


def environment(service: dict[str, Any]) -> dict[str, str]:
    """The service's environment, in either of Compose's forms, as strings."""
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    values: dict[str, str] = {}
    for name, value in raw.items():
        assert value is not None, f"{name} has no value"
        assert not isinstance(value, dict | list), f"{name} must be a scalar"
        # Compose passes booleans and numbers on as their YAML text.
        values[name] = str(value).lower() if isinstance(value, bool) else str(value)
    return values


def notifier_services() -> dict[str, dict[str, Any]]:
    """The services built from the repository's image."""
    return {name: service for name, service in services().items() if "build" in service}


def settings_of(name: str, tmp_path: Path) -> Settings:
    """The settings a service's notifier process starts with: the image holds no
    settings file, so embedded defaults plus the service's ``NOTIFIER_*`` variables."""
    empty = tmp_path / "empty-settings.yml"
    empty.write_text("")
    try:
        return load_settings(empty, environ=environment(services()[name]))
    except SettingsError as exc:
        pytest.fail(f"{name}: {exc.detail}")


def host_port_bindings(service: dict[str, Any]) -> list[tuple[str, int, int, str]]:
    """(host address, host port, container port, protocol) for each published port."""
    bindings = []
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            host_ip = entry.get("host_ip", "0.0.0.0")
            published, target = entry.get("published"), entry["target"]
            protocol = entry.get("protocol", "tcp")
        else:
            text, _, protocol = str(entry).partition("/")
            *host, target = text.rsplit(":", 2)
            host_ip, published = ("0.0.0.0", None)
            if len(host) == 2:
                host_ip, published = host
            elif len(host) == 1:
                published = host[0]
            protocol = protocol or "tcp"
        assert published not in (None, ""), f"{entry}: give the host port explicitly"
        assert "-" not in str(published), f"{entry}: one port, not a range"
        bindings.append((host_ip, int(published), int(target), protocol))
    return bindings


# -- the compose file --------------------------------------------------------------------


def test_compose_file_parses_with_the_services_of_the_layout() -> None:
    found = services()
    missing = [name for name in LAYOUT if name not in found]
    assert not missing, f"{COMPOSE_FILE.name} lacks services {missing}"
    postgres = found["postgres"]
    assert postgres["image"] == "postgres:16"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    named = {volume.split(":", 1)[0] for volume in postgres["volumes"]}
    assert named & set(compose()["volumes"]), "PostgreSQL's data needs a named volume"
    for name in ("migrate", *API_REPLICAS, "worker", "capture"):
        assert (COMPOSE_FILE.parent / found[name]["build"]).resolve() == ROOT, name
    assert (ROOT / "Dockerfile").is_file()


def test_every_notifier_command_parses_with_the_real_cli() -> None:
    commands = {}
    for name, service in notifier_services().items():
        args = argv(service)
        assert args, f"{name} runs no command"
        commands[name] = parse_notifier(args).command
    expected = {
        "migrate": "migrate",
        "api-1": "serve",
        "api-2": "serve",
        "worker": "worker",
        "capture": "capture",
    }
    assert {name: commands.get(name) for name in expected} == expected


def test_every_notifier_variable_names_a_real_setting(tmp_path: Path) -> None:
    known = set(settings_keys(Settings))
    for name in notifier_services():
        for variable in environment(services()[name]):
            if not variable.startswith(ENV_PREFIX) or variable == SETTINGS_ENV:
                continue
            # The key walk of notifier.settings: NOTIFIER_SMTP__HOST -> smtp.host.
            key = ".".join(variable[len(ENV_PREFIX) :].lower().split("__"))
            assert key in known, f"{name}: {variable} names no setting ({key})"
        settings_of(name, tmp_path)  # and the values are valid together


def test_api_replicas_only_accept_and_one_worker_delivers(tmp_path: Path) -> None:
    for name in API_REPLICAS:
        assert parse_notifier(argv(services()[name])).command == "serve"
        assert settings_of(name, tmp_path).delivery.in_serve is False, name
    workers = [
        name
        for name, service in notifier_services().items()
        if parse_notifier(argv(service)).command == "worker"
    ]
    assert workers == ["worker"]
    delivering_serves = [
        name
        for name, service in notifier_services().items()
        if parse_notifier(argv(service)).command == "serve"
        and settings_of(name, tmp_path).delivery.in_serve
    ]
    assert not delivering_serves


def test_the_outbox_is_the_postgres_service_and_the_relay_the_capture_service(
    tmp_path: Path,
) -> None:
    postgres = environment(services()["postgres"])
    capture = parse_notifier(argv(services()["capture"]))
    for name, service in notifier_services().items():
        if parse_notifier(argv(service)).command == "capture":
            continue
        settings = settings_of(name, tmp_path)
        assert settings.outbox.url is not None, f"{name} is not on PostgreSQL"
        url = urlsplit(settings.outbox.url.get_secret_value())
        assert url.scheme in ("postgresql", "postgres")
        assert (url.hostname, url.port or 5432) == ("postgres", 5432), name
        assert url.username == postgres["POSTGRES_USER"]
        assert unquote(url.password or "") == postgres["POSTGRES_PASSWORD"]
        assert url.path.lstrip("/") == postgres["POSTGRES_DB"]
        assert (settings.smtp.host, settings.smtp.port) == ("capture", capture.smtp_port)
        assert "smtp" in settings.subscribers


def test_secrets_come_from_the_environment_of_compose(tmp_path: Path) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    used = {m["named"] or m["braced"] for m in _PLACEHOLDER.finditer(text) if not m["escaped"]}
    assert used == set(TEST_VARIABLES)
    for variable in used:
        # Required, so Compose refuses to start without it; and not NOTIFIER_*, which
        # notifier would read as a setting wherever it is exported.
        assert f"${{{variable}:?" in text, f"{variable} must be required (${{{variable}:?...}})"
        assert not variable.startswith(ENV_PREFIX), variable
    for name in API_REPLICAS:
        tokens = settings_of(name, tmp_path).auth.tokens
        assert [token.token.get_secret_value() for token in tokens] == [TEST_VARIABLES["API_TOKEN"]]


def test_published_ports_are_not_duplicated_and_lead_somewhere() -> None:
    seen: dict[tuple[int, str], str] = {}
    for name, service in services().items():
        listening: set[int] = set()
        if "build" in service:
            args = parse_notifier(argv(service))
            options = ("port", "http_port", "smtp_port")
            listening = {getattr(args, option, None) for option in options}
            listening.discard(None)
        for host_ip, published, target, protocol in host_port_bindings(service):
            # A demo: the capture inbox and an API with a demo token stay on this machine.
            assert host_ip == "127.0.0.1", f"{name} publishes {published} beyond loopback"
            other = seen.setdefault((published, protocol), name)
            assert other == name, f"host port {published} is published by {other} and {name}"
            if "build" in service:
                assert target in listening, f"{name} publishes {target}, where nothing listens"


def test_healthchecks_ask_what_each_process_serves() -> None:
    found = services()
    for name in API_REPLICAS:
        test = " ".join(found[name]["healthcheck"]["test"])
        port = parse_notifier(argv(found[name])).port
        assert re.search(rf"http://127\.0\.0\.1:{port}/(readyz|healthz)\b", test), name
    capture = parse_notifier(argv(found["capture"]))
    assert f"http://127.0.0.1:{capture.http_port}/" in " ".join(
        found["capture"]["healthcheck"]["test"]
    )
    # The image's HEALTHCHECK asks port 8000, where these processes do not listen.
    for name in ("migrate", "worker"):
        assert found[name]["healthcheck"] == {"disable": True}, name


# -- docs/deployment.md ------------------------------------------------------------------

#: ``docker compose`` options that take a value (before the subcommand, and after it),
#: and subcommands whose positional arguments are service names (``run`` and ``exec``:
#: the first, then a command).
_GLOBAL_OPTIONS_WITH_VALUE = {"-f", "--file", "-p", "--project-name", "--env-file", "--profile"}
_OPTIONS_WITH_VALUE = {"--scale", "--tail", "-t", "--timeout", "--since", "--until"}
_SERVICE_SUBCOMMANDS = {"up", "start", "stop", "restart", "logs", "ps", "build", "pull", "rm"}
_COMPOSE_SUBCOMMANDS = _SERVICE_SUBCOMMANDS | {"down", "config", "run", "exec"}
#: NOTIFIER_* names the doc quotes that are no setting: the settings file's variable, and
#: the name it warns against using for a secret.
NOT_SETTINGS = {SETTINGS_ENV, "NOTIFIER_TOKEN"}
#: Files the doc tells operators to create.
CREATED_BY_THE_OPERATOR = {"deploy/.env"}


def doc_text() -> str:
    return DEPLOYMENT_DOC.read_text(encoding="utf-8")


def shell_lines(text: str) -> list[str]:
    """Lines of the doc's ```sh blocks, continuation lines joined, comments removed."""
    lines: list[str] = []
    for block in re.findall(r"^```sh\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        for line in block.replace("\\\n", " ").splitlines():
            command = shlex.split(line, comments=True)
            if command:
                lines.append(shlex.join(command))
    return lines


def test_docker_compose_commands_in_the_doc_use_the_compose_file_and_its_services() -> None:
    commands = [line for line in shell_lines(doc_text()) if line.startswith("docker compose ")]
    inline = re.findall(r"`(docker compose [^`]+)`", doc_text())
    assert commands, "docs/deployment.md shows no docker compose command"
    for line in commands + inline:
        args = shlex.split(line)[2:]
        files = []
        while args and args[0].startswith("-"):
            option = args.pop(0)
            if option in _GLOBAL_OPTIONS_WITH_VALUE:
                value = args.pop(0)
                if option in ("-f", "--file"):
                    files.append(value)
        assert files, f"{line}: name the file (-f deploy/compose.yaml)"
        for file in files:
            assert (ROOT / file).resolve() == COMPOSE_FILE, f"{line}: {file}"
        assert args, f"{line}: no subcommand"
        subcommand = args.pop(0)
        assert subcommand in _COMPOSE_SUBCOMMANDS, f"{line}: unknown subcommand"
        named, positional = [], []
        while args:
            arg = args.pop(0)
            if arg in _OPTIONS_WITH_VALUE:
                value = args.pop(0)
                if arg == "--scale":
                    named.append(value.split("=", 1)[0])
            elif not arg.startswith("-"):
                positional.append(arg)
        if subcommand in _SERVICE_SUBCOMMANDS:
            named += positional
        elif subcommand in ("run", "exec") and positional:
            named.append(positional[0])
            if positional[1:2] == ["notifier"]:
                parse_notifier(positional[1:])
        for service in named:
            assert service in services(), f"{line}: no service {service!r}"


def test_notifier_commands_in_the_doc_parse_with_the_real_cli() -> None:
    text = doc_text()
    commands = [shlex.split(command) for command in re.findall(r"`(notifier [a-z][^`]*)`", text)]
    for line in shell_lines(text):
        words = shlex.split(line)
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words.pop(0)  # VARIABLE=value before the command
        if words[:1] == ["notifier"]:
            commands.append(words)
    assert commands
    for command in commands:
        parse_notifier(command)


def test_settings_and_variables_named_in_the_doc_exist() -> None:
    text = doc_text()
    known = set(settings_keys(Settings))
    sections = {key.split(".")[0] for key in known if "." in key}
    for key in set(re.findall(r"`([a-z_]+\.[a-z_]+)`", text)):
        if key.split(".")[0] in sections:
            assert key in known, f"docs/deployment.md names {key}, which is no setting"
    for variable in set(re.findall(r"\bNOTIFIER_[A-Z0-9_]*[A-Z0-9]", text)):
        if variable in NOT_SETTINGS:
            continue
        key = ".".join(variable[len(ENV_PREFIX) :].lower().split("__"))
        assert key in known, f"docs/deployment.md names {variable}, which is no setting"


def test_paths_quoted_in_the_doc_exist() -> None:
    quoted = re.findall(
        r"`((?:deploy|docs|templates|tests|notifier)/[\w./-]*|Dockerfile)`", doc_text()
    )
    assert "deploy/compose.yaml" in quoted
    for path in quoted:
        if path not in CREATED_BY_THE_OPERATOR:
            assert (ROOT / path).exists(), f"docs/deployment.md quotes {path}, which is missing"


def heading_anchors(markdown: Path) -> set[str]:
    """The anchors GitHub gives a file's headings."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", markdown.read_text(encoding="utf-8"), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


@pytest.mark.parametrize(
    "markdown", ["docs/deployment.md", "docs/operations.md", "README.md"], ids=str
)
def test_links_between_the_deployment_docs_lead_somewhere(markdown: str) -> None:
    source = ROOT / markdown
    text = source.read_text(encoding="utf-8")
    for target, anchor in re.findall(r"\]\(([^)#:\s]*)(?:#([^)\s]*))?\)", text):
        path = (source.parent / target).resolve() if target else source
        assert path.exists(), f"{markdown}: broken link to {target}"
        if anchor and path.suffix == ".md":
            assert anchor in heading_anchors(path), f"{markdown}: no #{anchor} in {path.name}"


def test_the_doc_covers_the_scaled_out_layout() -> None:
    text = doc_text()
    for phrase in (
        "outbox.url",
        "notifier worker",
        "notifier migrate",
        "delivery.in_serve",
        "delivery.lease_seconds",
        "outbox.pool_size",
        "max_connections",
        "503",
        "urn:notifier:problem:outbox-unavailable",
        "/readyz",
        "GET /v1/messages?status=queued",
        "NTP",
    ):
        assert phrase in text, f"docs/deployment.md does not mention {phrase}"
