# notifier container: a slim runtime image without build tools, running as non-root.
# Build: docker build -t notifier .   Run: see docs/deployment.md.

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY notifier ./notifier
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
# No settings file: the image runs on notifier's embedded defaults (JSON logs, no sender
# allowed but defaults.from) plus NOTIFIER_* variables; the repository's settings.yml is
# for local use only.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin notifier
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
COPY templates ./templates
RUN mkdir -p /app/var && chown notifier:notifier /app/var
USER notifier
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["notifier", "serve", "--host", "0.0.0.0", "--port", "8000"]
