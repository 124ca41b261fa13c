# Fireline image: the CLI, the API and worker.py. One image for every role; docker-compose.yml
# picks the role per service (api, or worker.py --domains X).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FIRELINE_LOG_FORMAT=json

WORKDIR /app

# Dependencies first so code edits do not re-download them: a stub tree lets pip resolve and
# install the project's requirements from pyproject.toml alone.
COPY pyproject.toml README.md* ./
RUN mkdir -p fireline workflows activities \
    && touch fireline/__init__.py workflows/__init__.py activities/__init__.py worker.py \
    && pip install . \
    && pip uninstall -y fireline \
    && rm -rf fireline workflows activities worker.py build *.egg-info

COPY fireline ./fireline
COPY workflows ./workflows
COPY activities ./activities
COPY playbooks ./playbooks
COPY worker.py ./
RUN pip install --no-deps . && rm -rf build *.egg-info
# The image user cannot write bytecode beside the code, and PYTHONDONTWRITEBYTECODE forbids it
# anyway: compile once here, or every worker start pays for it again.
RUN python -m compileall -q fireline workflows activities worker.py

RUN useradd --create-home --uid 10001 fireline \
    && mkdir -p /app/data \
    && chown fireline:fireline /app/data
USER fireline

ENTRYPOINT ["fireline"]
CMD ["--help"]
