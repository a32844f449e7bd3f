"""What passes between the components: the API's names and grammars, the Prometheus label
set, and the views of the status the router consumes.

The operator, the router, the simulator and the local fleet may import this package; it
imports none of them (import-linter's ``contract-leaf`` contract). Modules:

- ``names``: API group/version/kinds, label and annotation keys, ``<factory>-<pool>``.
- ``grammar``: jurisdiction codes and region names.
- ``metrics``: the engines' Prometheus label set, the PodMonitor relabelings, vLLM metrics.
- ``status``: pydantic views of FleetRegion and InferenceFactory as the router reads them.
"""
