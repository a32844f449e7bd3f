"""Where backends come from: a static YAML file, or Kubernetes (watched).

Both produce an immutable `policy.fleet.Fleet` and hand it to a callback; the app swaps
it in atomically. Translation from source objects to a Fleet is a pure function.
"""
