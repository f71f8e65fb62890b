"""What the routes need, built once per process and kept on app.state."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from temporalio.client import Client

from haven.db import Database
from haven.intake import Intake
from haven.settings import Settings
from api.auth import TokenVerifier


@dataclass
class Services:
    settings: Settings
    db: Database
    client: Client
    intake: Intake
    verifier: TokenVerifier


def services(request: Request) -> Services:
    return request.app.state.services
