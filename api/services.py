"""What the routes need, built once per process and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass

from typing import Annotated

from fastapi import Depends, Request
from temporalio.client import Client

from haven.case_keys import CaseKeys
from haven.db import Database
from haven.intake import Intake
from haven.keyring import KeyRing
from haven.settings import Settings
from api.auth import TokenVerifier
from api.limits import RateLimit


@dataclass
class Services:
    settings: Settings
    db: Database
    client: Client
    intake: Intake
    verifier: TokenVerifier
    intake_rate: RateLimit
    payload_keys: KeyRing
    case_keys: CaseKeys


def services(request: Request) -> Services:
    return request.app.state.services


Svc = Annotated[Services, Depends(services)]
