"""The inbox's two HTML pages, rendered server-side with autoescaping and no scripts.

Everything shown comes from captured mail, i.e. from whoever could connect to the SMTP
port, so every value is escaped and the HTML body only ever appears inside an iframe
with an empty ``sandbox`` attribute (no scripts, no forms, unique origin).

Internal to notifier: not part of its public API (see :mod:`notifier`).
"""

from __future__ import annotations

from typing import Any

from jinja2 import DictLoader, Environment, StrictUndefined, select_autoescape

__all__ = ["render_inbox", "render_message"]

_LAYOUT = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{% block title %}{% endblock %} · notifier capture</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 0; color: #1d2330; }
  header { background: #1d2330; color: #fff; padding: .6rem 1rem; }
  header a { color: #fff; text-decoration: none; font-weight: 600; }
  main { padding: 1rem; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #dde1e8; }
  tr:hover td { background: #f3f5f9; }
  .empty { color: #687085; }
  pre { background: #f3f5f9; padding: .75rem; overflow-x: auto; white-space: pre-wrap; }
  iframe { width: 100%; min-height: 20rem; border: 1px solid #dde1e8; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: .2rem 1rem; }
  dt { font-weight: 600; }
  dd { margin: 0; word-break: break-word; }
</style>
</head>
<body>
<header><a href="/">notifier capture</a></header>
<main>{% block main %}{% endblock %}</main>
</body>
</html>
"""

_INBOX = """{% extends "layout.html" %}
{% block title %}Inbox ({{ messages|length }}){% endblock %}
{% block main %}
<h1>Inbox <small>({{ messages|length }})</small></h1>
{% if messages %}
<table id="messages">
<thead><tr><th>Received</th><th>From</th><th>To</th><th>Subject</th><th>Size</th></tr></thead>
<tbody>
{% for message in messages %}
<tr>
  <td>{{ message.received_at }}</td>
  <td>{{ message.from or message.envelope.from }}</td>
  <td>{{ (message.to or message.envelope.to)|join(", ") }}</td>
  <td><a class="subject" href="/messages/{{ message.id|urlencode }}">
    {{- message.subject or "(no subject)" -}}</a></td>
  <td>{{ message.size }}</td>
</tr>
{% endfor %}
</tbody>
</table>
{% else %}
<p class="empty">No messages yet. Send mail to this server's SMTP port and refresh.</p>
{% endif %}
{% endblock %}
"""

_MESSAGE = """{% extends "layout.html" %}
{% block title %}{{ message.subject or "(no subject)" }}{% endblock %}
{% block main %}
<h1 id="subject">{{ message.subject or "(no subject)" }}</h1>
<dl id="envelope">
  <dt>Envelope from</dt><dd>{{ message.envelope.from or "<>" }}</dd>
  <dt>Envelope to</dt><dd>{{ message.envelope.to|join(", ") }}</dd>
  <dt>Received</dt><dd>{{ message.received_at }}</dd>
  <dt>Size</dt><dd>{{ message.size }} bytes
    (<a href="/api/messages/{{ message.id|urlencode }}/raw">download .eml</a>)</dd>
</dl>
<h2>Headers</h2>
<dl id="headers">
{% for name, value in message.headers %}<dt>{{ name }}</dt><dd>{{ value }}</dd>
{% endfor %}
</dl>
{% if message.text is not none %}
<h2>Text</h2>
<pre id="text">{{ message.text }}</pre>
{% endif %}
{% if message.html is not none %}
<h2>HTML</h2>
<iframe id="html" sandbox="" referrerpolicy="no-referrer"
  src="/messages/{{ message.id|urlencode }}/html" title="HTML body"></iframe>
{% endif %}
<h2>Source</h2>
<pre id="raw">{{ raw }}</pre>
{% endblock %}
"""

_environment = Environment(
    loader=DictLoader({"layout.html": _LAYOUT, "inbox.html": _INBOX, "message.html": _MESSAGE}),
    autoescape=select_autoescape(default=True),
    undefined=StrictUndefined,
)


def render_inbox(messages: list[dict[str, Any]]) -> str:
    """The list page, from message summaries (newest first)."""
    return _environment.get_template("inbox.html").render(messages=messages)


def render_message(message: dict[str, Any], *, raw: str) -> str:
    """One message's page, from its API detail and its source text."""
    return _environment.get_template("message.html").render(message=message, raw=raw)
