"""OpenTelemetry tracing of Temporal work through Temporal's contrib interceptor: a span for each
workflow started, each workflow run, signal, update, query and activity, joined across the API and
the workers. Off unless an OTLP endpoint is configured (HAVEN_TRACING_OTLP_ENDPOINT). Spans carry
names and ids (workflow ids are request ids), never payloads: those stay sealed."""

from __future__ import annotations

from temporalio.client import Interceptor

from haven.settings import Settings


def tracing_interceptors(settings: Settings, service_name: str) -> list[Interceptor]:
    """The interceptors for this process's Temporal client (a client's interceptors also trace the
    workers built on it); none when tracing is off."""
    if not settings.tracing_otlp_endpoint:
        return []
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.tracing_otlp_endpoint)))
    trace.set_tracer_provider(provider)
    return [interceptor(provider.get_tracer("haven"))]


def interceptor(tracer) -> Interceptor:
    from temporalio.contrib.opentelemetry import TracingInterceptor

    return TracingInterceptor(tracer)
