"""Money is integer minor units with an ISO 4217 currency: never a float."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, Strict


def _whole_number(value: Any) -> Any:
    # JSON has one kind of number, and JSON Schema's `integer` is any number without a fraction:
    # 150000.0 is the integer 150000. A fraction, a string and a boolean are still refused.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# An integer as the API's schema states it (`"type": "integer"`), never a float with a fraction.
WholeNumber = Annotated[int, BeforeValidator(_whole_number), Strict()]


class Money(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    minor_units: WholeNumber = Field(ge=0, le=10**13, description="Amount in the currency's minor unit (cents).")
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO 4217 code, e.g. EUR.")

    def __str__(self) -> str:
        return f"{self.minor_units} {self.currency} (minor units)"


class PositiveMoney(Money):
    """An amount someone asks for: more than nothing."""

    minor_units: WholeNumber = Field(gt=0, le=10**13, description="Amount in the currency's minor unit (cents).")


def convert_minor_units(
    minor_units: int, *, from_exponent: int, to_exponent: int, rate: Decimal
) -> int:
    """Converts an amount between currencies, rounding half up to the target's minor unit."""
    major = Decimal(minor_units) / (Decimal(10) ** from_exponent)
    target = (major * rate * (Decimal(10) ** to_exponent)).quantize(Decimal(1), rounding=ROUND_HALF_UP)
    return int(target)


def format_decimal(minor_units: int, exponent: int) -> str:
    """'1234.50' for 123450 with exponent 2: how exports and people read amounts."""
    sign = "-" if minor_units < 0 else ""
    value = abs(minor_units)
    if exponent == 0:
        return f"{sign}{value}"
    return f"{sign}{value // 10**exponent}.{value % 10**exponent:0{exponent}d}"
