"""Pure routing policy: no I/O, no clocks of its own (time is always passed in).

Everything that decides *where a request may go* and *where it should go* lives here so
that it can be tested exhaustively (including property tests over random fleets).
"""
