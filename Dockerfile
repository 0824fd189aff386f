# The image of a cloud bakery's flow pods and Dask workers (deployments/bakeries.yaml: image).
# Build: docker build -t ghcr.io/<org>/forge:<tag> .   (the recipes are baked in; rebuild when they change)
FROM python:3.12-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 FORGE_PROJECT_DIR=/opt/forge
WORKDIR /opt/forge
COPY pyproject.toml README.md ./
COPY forge forge
COPY tasks tasks
COPY flows flows
COPY recipes recipes
COPY deployments deployments
RUN pip install ".[cloud]" && useradd --uid 1000 --create-home forge
USER forge
