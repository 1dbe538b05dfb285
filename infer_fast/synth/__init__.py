"""Synthesis stage: INFER's universal feature compensators and the sre2l/random baselines (`infer-fast distill`)."""
