"""``python -m bench.sim_fidelity`` runs the benchmark (see run.py)."""

from bench.sim_fidelity.run import main

raise SystemExit(main())
