"""Reads a policy file, validates it and computes the content hash that identifies its version."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import yaml

from policies.model import Policy, PolicyVersion


def policy_hash(policy: Policy) -> str:
    canonical = json.dumps(policy.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def version_of(policy: Policy) -> PolicyVersion:
    return PolicyVersion(hash=policy_hash(policy), policy=policy)


def parse_policy(text: str) -> PolicyVersion:
    return version_of(Policy.model_validate(yaml.safe_load(text)))


def load_policy(path: Path) -> PolicyVersion:
    return parse_policy(Path(path).read_text(encoding="utf-8"))
