# One image for every process: the API (default), worker, beat, Flower and migrations,
# chosen by the command (see docker-compose.yml):
#   docker run IMAGE                                     -> uvicorn app.main:app (the API)
#   (-e FORWARDED_ALLOW_IPS=<proxy> when a proxy in front sets X-Forwarded-For)
#   docker run IMAGE celery -A workers worker -l INFO    -> a worker (every queue)
#   docker run IMAGE celery -A workers beat -l INFO -s /tmp/celerybeat-schedule
#   docker run IMAGE celery -A workers flower --port=5555
#   docker run IMAGE python -m app.cli migrate
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# An unprivileged user; the code stays root-owned, so a compromised process cannot rewrite it.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app

# Dependencies first, in their own layer: a code change does not reinstall them.
# Every pinned package ships a manylinux wheel, so no compiler is needed.
COPY requirements.txt ./
RUN pip install -r requirements.txt

# The code (what .dockerignore leaves): app/, workers/, celeryconfig.py, alembic.ini,
# sources.toml and the bundled samples in data/samples/ that it reads.
COPY . .

USER app

EXPOSE 8000 5555

# No HEALTHCHECK here: the right probe depends on the process (HTTP for the API and
# Flower, `celery inspect ping` for a worker); docker-compose.yml sets one per service.
# --no-proxy-headers: the app trusts X-Forwarded-For only from FORWARDED_ALLOW_IPS (default
# none); uvicorn's own handling would trust it from loopback.
CMD ["uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
