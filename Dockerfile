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

# Editable install, so that the scenarios/ shipped in /app sit next to the code
# the compose main job runs (the policies ship in the package either way).
RUN pip install --no-cache-dir -e /app \
    && useradd --system --uid 10001 --home-dir /app gongji \
    && mkdir -p /data \
    && chown gongji /data

USER gongji
VOLUME ["/data"]

ENTRYPOINT ["gongji"]
CMD ["--help"]
