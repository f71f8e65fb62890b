"""Custom search attributes: what lets an operator find requests in Temporal's web UI and CLI
without opening a payload (`HavenStatus = "payment_pending"`, `HavenCategory = "safe_housing"`).
They name no one: a status, a category, an urgency. A namespace must have them registered before
haven's workflows start (`haven temporal setup`; `haven run` and the dev servers haven starts
register them themselves)."""

from __future__ import annotations

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes

STATUS = SearchAttributeKey.for_keyword("HavenStatus")
CATEGORY = SearchAttributeKey.for_keyword("HavenCategory")
URGENCY = SearchAttributeKey.for_keyword("HavenUrgency")
ALL = (STATUS, CATEGORY, URGENCY)


def at_intake(category: str, urgency: str, status: str) -> TypedSearchAttributes:
    return TypedSearchAttributes([
        SearchAttributePair(STATUS, str(status)), SearchAttributePair(CATEGORY, str(category)),
        SearchAttributePair(URGENCY, str(urgency)),
    ])  # fmt: skip


def dev_server_flags() -> list[str]:
    """`temporal server start-dev` arguments that register them."""
    return [arg for key in ALL for arg in ("--search-attribute", f"{key.name}=Keyword")]


async def missing(client: Client, namespace: str) -> list[str]:
    listed = await client.operator_service.list_search_attributes(ListSearchAttributesRequest(namespace=namespace))
    return [key.name for key in ALL if key.name not in listed.custom_attributes]


async def register(client: Client, namespace: str) -> list[str]:
    """Registers the ones the namespace lacks (none again: it is safe to repeat); their names."""
    names = await missing(client, namespace)
    if names:
        await add(client, namespace, names)
    return names


async def add(client: Client, namespace: str, names: list[str]) -> None:
    """Adds these, without asking what is there (Temporal's time-skipping test server cannot list)."""
    keyword = IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(namespace=namespace, search_attributes={name: keyword for name in names})
    )


def cloud_command(namespace: str, names: list[str]) -> str:
    """Temporal Cloud registers search attributes through its own tool, not the operator API."""
    flags = " ".join(f"--search-attribute {name}=Keyword" for name in names)
    return f"tcld namespace search-attributes add --namespace {namespace} {flags}"
