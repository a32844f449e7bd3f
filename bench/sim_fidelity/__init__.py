"""Fidelity benchmark: factory_sim beside published vLLM figures (H100) and real vLLM (CPU)."""
