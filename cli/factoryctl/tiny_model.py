"""A tiny Llama model made here, for the real vLLM engine: no hub is reachable.

A `LlamaForCausalLM` with 2 layers, hidden size 128 and 4 attention heads (head_dim 32, which
vLLM's CPU attention supports), random weights from a fixed seed, saved as safetensors; a
byte-level BPE tokenizer of about 2,000 tokens trained with `tokenizers` on the interpreter's
own standard-library sources (sorted, so the same Python makes the same tokenizer), saved as a
fast tokenizer with a chat template. About 2 MB; its answers are gibberish, but vLLM loads,
batches, caches and measures it like any other model.

This file is run as a script by the vLLM environment's interpreter (which has torch,
transformers and tokenizers): `<vllm python> tiny_model.py <out dir>`. The project's own code
only reads `SOURCE` (to key the cache on this file's content); `vllm_env.ensure_tiny_model`
runs it. Only the standard library is imported at module level.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path
from typing import Any

SOURCE = Path(__file__)
SEED = 1234
VOCAB_SIZE = 2000
CORPUS_BYTES = 2_000_000
BOS, EOS, PAD = "<s>", "<|end|>", "<pad>"
ROLES = ("system", "user", "assistant")
SPECIAL_TOKENS = [BOS, EOS, PAD, *(f"<|{role}|>" for role in ROLES)]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
ARCHITECTURE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def corpus() -> list[str]:
    """The training text: the standard library's top-level modules, in name order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts, size = [], 0
    for path in sorted(stdlib.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        size += len(text)
        if size >= CORPUS_BYTES:
            break
    return texts


def make(out: Path) -> None:
    """Write the model and tokenizer into `out` (an empty folder)."""
    # Imported here: these exist only in the vLLM environment, which runs this file.
    import torch  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
    from tokenizers import (  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        trainers,
    )
    from transformers import (  # type: ignore[import-not-found, unused-ignore]  # noqa: PLC0415
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=CHAT_TEMPLATE,
        model_max_length=ARCHITECTURE["max_position_embeddings"],
    )
    fast.save_pretrained(out)

    torch.manual_seed(SEED)
    config = LlamaConfig(
        vocab_size=tokenizer.get_vocab_size(),
        bos_token_id=tokenizer.token_to_id(BOS),
        eos_token_id=tokenizer.token_to_id(EOS),
        pad_token_id=tokenizer.token_to_id(PAD),
        **ARCHITECTURE,
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)


if __name__ == "__main__":
    make(Path(sys.argv[1]))
