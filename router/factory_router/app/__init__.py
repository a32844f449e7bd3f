"""The router's aiohttp application: OpenAI endpoints, proxying, admin, metrics, logs."""
