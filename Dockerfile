FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY service ./service
COPY shared ./shared
COPY writes ./writes
COPY reads ./reads
COPY migrations ./migrations
# With the otel extra: tracing is then a matter of OTEL_* variables (docs/operating.md,
# "Tracing"); unset, nothing of it is imported.
RUN pip install ".[otel]" && useradd --system --no-create-home orders
USER orders

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=2).status != 200)"
CMD ["orders-api", "serve", "--host", "0.0.0.0", "--port", "8000"]
