"""The catalog: people, roles, tiers and the rules for who may decide what."""
