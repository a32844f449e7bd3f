"""The router's HTTP side: its server, OpenAI endpoints, proxying, admin, metrics, logs."""
