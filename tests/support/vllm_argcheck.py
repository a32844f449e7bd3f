"""Parse command lines with the real vLLM's own `vllm serve` parser (run in the vLLM env).

Usage: `<vllm python> vllm_argcheck.py CASES.json RESULTS.json`. CASES is a list of
`{"id": ..., "command": [...], "args": [...]}`; the command must be `vllm serve` (anything else
is the case's error), and the arguments go through the same steps as `vllm serve`'s: vLLM's
FlexibleArgumentParser with `make_arg_parser`, the positional model taking precedence over
`--model` (as `ServeSubcommand.cmd` does), `validate_parsed_serve_args`, then
`AsyncEngineArgs.from_cli_args`. RESULTS maps each id to
`{"ok": true, "parsed": {...}}` or `{"ok": false, "error": "..."}`, and the key `vllm` to the
version of vLLM that parsed them. One process for all cases:
importing vLLM takes about 30 s on 2 cores. Results go to a file because vLLM logs to stdout.
Only the standard library is imported at module level (tests import `__file__` from here).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import sys
from typing import Any

# Fields read back from the parsed engine arguments, to check each flag meant what was meant.
FIELDS = (
    "model",
    "served_model_name",
    "tensor_parallel_size",
    "max_model_len",
    "max_num_seqs",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "kv_cache_dtype",
    "quantization",
    "enable_prefix_caching",
    "speculative_config",
    "revision",
    "load_format",
    "block_size",
    "num_gpu_blocks_override",
    "additional_config",
)


def _plain(value: Any) -> Any:
    try:
        json.dumps(value)
    except TypeError:
        return repr(value)
    return value


def main(cases_path: str, results_path: str) -> None:
    from vllm.engine.arg_utils import AsyncEngineArgs  # noqa: PLC0415
    from vllm.entrypoints.launchers.cli_args import (  # noqa: PLC0415
        make_arg_parser,
        validate_parsed_serve_args,
    )
    from vllm.utils.argparse_utils import FlexibleArgumentParser  # noqa: PLC0415

    with open(cases_path) as f:
        cases = json.load(f)
    results: dict[str, Any] = {}
    for case in cases:
        if case["command"] != ["vllm", "serve"]:
            results[case["id"]] = {"ok": False, "error": f"not `vllm serve`: {case['command']}"}
            continue
        # A fresh parser per case: argparse keeps no state between parses, but vLLM's
        # subclass might, and building one takes about a second.
        parser = make_arg_parser(FlexibleArgumentParser(prog="vllm serve"))
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                namespace = parser.parse_args(case["args"])
                if getattr(namespace, "model_tag", None) is not None:
                    namespace.model = namespace.model_tag
                validate_parsed_serve_args(namespace)
                engine_args = AsyncEngineArgs.from_cli_args(namespace)
        except SystemExit as exc:
            message = errors.getvalue().strip().splitlines()
            results[case["id"]] = {"ok": False, "error": message[-1] if message else str(exc)}
            continue
        except Exception as exc:  # anything vLLM raises is the case's verdict
            results[case["id"]] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            continue
        parsed = {name: _plain(getattr(engine_args, name, None)) for name in FIELDS}
        results[case["id"]] = {"ok": True, "parsed": parsed}
    results["vllm"] = importlib.metadata.version("vllm")
    with open(results_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
