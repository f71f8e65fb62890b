"""Business rules as data (the YAML files here) plus small pure functions (rules, screening)."""

from policies.loader import load_policy, policy_hash, version_of
from policies.model import Policy, PolicyVersion

__all__ = ["Policy", "PolicyVersion", "load_policy", "policy_hash", "version_of"]
