"""Probes, the response parser, scoring by rule, reference policies and metrics (SPEC 6)."""
