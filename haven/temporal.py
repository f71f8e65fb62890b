"""How every process reaches Temporal: one data converter (pydantic JSON, then sealed by the
payload codec), one client factory."""

from __future__ import annotations

from temporalio.client import Client
from temporalio.converter import DataConverter

from haven.keys import payload_keys
from haven.payload_codec import data_converter as sealed_converter
from haven.settings import Settings


def data_converter(settings: Settings) -> DataConverter:
    return sealed_converter(payload_keys(settings))


async def connect(settings: Settings) -> Client:
    return await Client.connect(
        settings.temporal_address, namespace=settings.temporal_namespace, data_converter=data_converter(settings)
    )
