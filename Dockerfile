# CityOps: one image for every process (`cityops api`, `cityops bridge`, ...), used by
# docker-compose.yml. The service's command is the subcommand: ENTRYPOINT ["cityops"].
#
#   docker build -t cityops:local .
#   docker run --rm cityops:local --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    CITYOPS_DATA_DIR=/data/city

# Unprivileged runtime user. /data/city belongs to it so that a named volume mounted
# there (compose: city-data) starts out writable for `cityops seed`.
RUN groupadd --system --gid 10001 cityops \
    && useradd --system --uid 10001 --gid cityops --home-dir /home/cityops --create-home \
        --shell /usr/sbin/nologin cityops \
    && install -d -o cityops -g cityops /data/city

WORKDIR /app

# Dependencies first, from pyproject.toml alone: this layer is rebuilt only when the
# dependencies change, not on every source edit. pyproject.toml pins the direct ones,
# deploy/constraints.txt (deploy/lock-constraints.sh) the transitive ones. All of them
# ship manylinux wheels (GDAL/PROJ/GEOS inside pyogrio/pyproj/shapely, libpq inside
# psycopg[binary]), so no compiler or system library is installed.
COPY pyproject.toml deploy/constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt -c constraints.txt \
    && rm /tmp/requirements.txt

# Then the project itself, without touching the dependencies installed above.
COPY . .
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

USER cityops
WORKDIR /home/cityops

# No HEALTHCHECK here: only the API has an HTTP endpoint to probe, and compose gives it
# one (/readyz); the workers' health is their consumer-group membership and lag.
ENTRYPOINT ["cityops"]
CMD ["--help"]
