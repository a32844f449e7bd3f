"""Metering: the tokens of each request, read from the engines' own answers (pure).

- `request.ask_for_usage`: the body sent upstream; for a stream whose client did not ask
  for usage (`stream`, `include_usage` read as the engine's pydantic reads them: lax
  bools), `stream_options.include_usage` is added, and the answer's usage chunk is then
  stripped before it reaches the client.
- `sse.StreamMeter`: frames an SSE answer into events as it is relayed (each byte searched
  once), reads the usage chunk, strips it when the router asked for it, and counts content
  events (the estimate of a stream cut short before its usage chunk).
- `answer.usage_from_json` / `answer.JsonUsageScanner`: the top-level `usage` of a JSON
  answer held in memory (tail first, else all of it) / relayed in pieces (one pass).

A usage that cannot be read (None, or a meter's `unreadable`) is the caller's to settle
at the whole reservation. Nothing here does I/O or imports the rest of the router;
`app.proxy` wires it in.
"""
