# gongji worker / CLI image. One image serves every role: the command picks it
# (`worker bureau|accounts|pos`, `demo`, `settle ...`).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GONGJI_LOG_FORMAT=json \
    GONGJI_DATA_DIR=/data

WORKDIR /app
COPY . /app

# Editable install: the region policy files live in /app/policies at the repo
# root (outside the Python packages) and are found relative to the source tree.
RUN pip install --no-cache-dir -e /app \
    && useradd --system --uid 10001 --home-dir /app gongji \
    && mkdir -p /data \
    && chown gongji /data

USER gongji
VOLUME ["/data"]

ENTRYPOINT ["gongji"]
CMD ["--help"]
