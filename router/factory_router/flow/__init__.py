"""Priority and fairness under saturation (issue 19, item 3): `scheduler` (pure: classes,
per-tenant flows, round robin, shedding), `saturation` (pure: is a backend at capacity),
`control` (the asyncio side: waiters, dispatch, metrics)."""
