"""Screening of payee names against the denied-party list (data in denied_parties.yaml)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict

from haven.grant_request import ScreeningResult


class DeniedParty(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    name: str
    aliases: list[str] = []


class DeniedPartyList(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    version: str
    entries: list[DeniedParty]


def load_denied_parties(path: Path) -> DeniedPartyList:
    return DeniedPartyList.model_validate(yaml.safe_load(Path(path).read_text(encoding="utf-8")))


_LEGAL_SUFFIXES = {"ltd", "llc", "inc", "gmbh", "sa", "sarl", "plc", "ooo", "co", "corp", "limited"}


def name_key(name: str) -> tuple[str, ...]:
    """Case, accents, punctuation, word order and company suffixes do not hide a match."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().casefold()
    words = [w for w in re.split(r"[^a-z0-9]+", folded) if w and w not in _LEGAL_SUFFIXES]
    return tuple(sorted(words))


def screen(name: str, denied: DeniedPartyList) -> ScreeningResult:
    key = name_key(name)
    matched = [
        entry.id
        for entry in denied.entries
        if key and any(name_key(candidate) == key for candidate in (entry.name, *entry.aliases))
    ]
    return ScreeningResult(hit=bool(matched), matched_entries=matched, list_version=denied.version)
