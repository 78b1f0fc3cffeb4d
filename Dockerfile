# CityOps: one image for every process (`cityops api`, `cityops bridge`, ...), used by
# docker-compose.yml. The service's command is the subcommand: ENTRYPOINT ["cityops"].
#
#   docker build -t cityops:local .
#   docker run --rm cityops:local --help

# The page's vector tile decoder, api/static/vendor/mvt.js, built as scripts/web.sh builds
# it: web/package-lock.json's exact packages (--ignore-scripts: none runs code at install;
# esbuild's binary is in its platform package), bundled by esbuild. Without it the page
# would load whole GeoJSON layers instead of vector tiles.
FROM node:20-bookworm-slim AS web
WORKDIR /src/web
COPY web/package.json web/package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
COPY web/mvt.js ./
RUN mkdir -p ../api/static/vendor && npm run --silent bundle

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

# Then the project itself, without touching the dependencies installed above, with the
# decoder bundled above (the build context has no bundle: .dockerignore), installed with
# the page's other static files.
COPY . .
COPY --from=web /src/api/static/vendor/mvt.js api/static/vendor/mvt.js
RUN pip install --no-deps . \
    && rm -rf build ./*.egg-info

USER cityops
WORKDIR /home/cityops

# No HEALTHCHECK here: only the API has an HTTP endpoint to probe, and compose gives it
# one (/readyz); the workers' health is their consumer-group membership and lag.
ENTRYPOINT ["cityops"]
CMD ["--help"]
