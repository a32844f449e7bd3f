"""Metering: the tokens of each request, read from the engines' own answers (pure).

- `request.ask_for_usage`: the body sent upstream; for a stream whose client did not ask
  for usage, `stream_options.include_usage` is added, and the answer's usage chunk is then
  stripped before it reaches the client.
- `sse.StreamMeter`: frames an SSE answer into events as it is relayed, reads the usage
  chunk, strips it when the router asked for it, and counts content events (the estimate
  of a stream cut short before its usage chunk).
- `answer.usage_from_json_tail`: the top-level `usage` of a JSON answer, from its tail.

Nothing here does I/O or imports the rest of the router; `app.proxy` wires it in.
"""
