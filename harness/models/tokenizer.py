"""The byte-level tokenizer of the built-in tiny models (no download): 256 byte tokens, five
special tokens and a ChatML chat template; it round-trips any UTF-8 text."""

from __future__ import annotations

TOKENIZER_VERSION = "byte-chatml-1"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (the ByteLevel alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_byte_tokenizer():
    """A byte-level tokenizer with a ChatML chat template, built locally (no download).

    Token ids: byte ``v`` has id ``v`` (0..255); then ``<|pad|>`` 256, ``<|im_end|>`` 257 (EOS),
    ``<|mask|>`` 258, ``<|im_start|>`` 259, ``<|endoftext|>`` 260. ``len(tok) == 261``.
    Any UTF-8 text round-trips: ``tok.decode(tok(s).input_ids) == s``.

    Returns:
        transformers.PreTrainedTokenizerFast
    """
    from tokenizers import Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in _bytes_to_unicode().items()}
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = ByteLevel(add_prefix_space=False, use_regex=False)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(["<|pad|>", "<|im_end|>", "<|mask|>", "<|im_start|>", "<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|im_end|>",
                                  mask_token="<|mask|>", additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    tok.chat_template = CHATML_TEMPLATE
    tok.padding_side = "left"
    return tok
