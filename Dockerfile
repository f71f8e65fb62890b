# The API and the worker: one slim image, run as a non-root user.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY haven haven
COPY policies policies
COPY workflows workflows
COPY activities activities
COPY api api
COPY migrations migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 haven && mkdir -p /var/lib/haven && chown haven /var/lib/haven
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER haven
ENV HAVEN_VAR_DIR=/var/lib/haven \
    HAVEN_API_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 8000
CMD ["haven", "api"]
