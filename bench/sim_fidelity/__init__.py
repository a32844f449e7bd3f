"""Fidelity benchmark: the H100 profile of factory_sim beside published vLLM figures."""
