"""Compiling playbooks into sealed Plans: steps, includes, references, inputs, facts, policy."""
