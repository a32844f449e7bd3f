"""factory_sim: a vLLM-compatible engine simulator for the Inference Factory local fleet.

Layers (highest first, enforced by import-linter): ``main`` (CLI) > ``server`` (aiohttp:
OpenAI subset, /metrics, the SimHost and its control API) > ``engine`` (continuous-batching
model, prefix cache, vLLM metrics) > ``profiles`` (per-accelerator figures with sources).
"""
