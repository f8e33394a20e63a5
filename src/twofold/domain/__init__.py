"""Entities, value types, errors, rules and ports. Imports no framework and nothing of Twofold's outer layers."""
