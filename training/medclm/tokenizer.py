"""A byte-level BPE tokenizer trained on the VQA corpus, saved as a ``PreTrainedTokenizerFast``.

Choices, and why:
- Every digit is its own token (``Digits(individual_digits=True)``), so a box coordinate is three digit
  predictions the model can learn place by place, not one of 1000 rare whole-number tokens. With
  ``box_tokens: pixels`` the boxes are snapped to the input's pixel grid and each of its values is one
  whole-number token (``number_tokens``), matched only as a whole number, so "1312" stays four digits.
- ``<box>`` and ``</box>`` are atomic added tokens but NOT special: decoders (and vLLM by default) skip
  special tokens, and the service must see the box markup in the generated text to parse it.
- ``<image>`` and the role markers are special: they never occur in text and are dropped when decoding.
- No post-processor adds BOS: the chat template starts with ``{{ bos_token }}``, because vLLM's chat
  endpoint renders the template and then tokenizes without adding special tokens; transformers'
  ``apply_chat_template`` does the same, so both produce identical ids.
- Role markers are special tokens, so a prompt and its target tokenize the same apart or together.
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
IMAGE_TOKEN = "<image>"
USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
SYSTEM_TOKEN = "<|system|>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN)
BOX_TOKENS = ("<box>", "</box>")

# User turns render as "<image>\n{text}": image parts first, whatever order the client sent them in. That is
# the string vLLM builds itself for LLaVA ("<image>" placeholder + "\n" + text) when it flattens a chat
# message, so transformers and vLLM see the same prompt either way. String content is passed through as is.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}{{- '<|user|>' -}}"
    "{%- elif message['role'] == 'assistant' -%}{{- '<|assistant|>' -}}"
    "{%- else -%}{{- '<|system|>' -}}{%- endif -%}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}"
    "{%- for part in message['content'] if part['type'] in ['image', 'image_url'] -%}{{- '<image>\\n' -}}{%- endfor -%}"
    "{%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}"
    "{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{- eos_token -}}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>' -}}{%- endif -%}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, number_tokens: Iterable[int] = (),
                    ) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE on ``texts`` and wrap it with the special tokens and chat template.

    The byte alphabet is always included, so any input text (a service question in other words) still
    tokenizes; the learned merges only make the corpus' own wording short. ``number_tokens`` become
    whole-number tokens (after the learned vocabulary) that match only a number standing on its own.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in BOX_TOKENS])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN,
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        additional_special_tokens=[IMAGE_TOKEN, USER_TOKEN, ASSISTANT_TOKEN, SYSTEM_TOKEN],
        model_max_length=4096,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = CHAT_TEMPLATE
    add_number_tokens(wrapped, number_tokens)
    return wrapped


def add_number_tokens(tokenizer, numbers: Iterable[int]) -> list[int]:
    """Add each number as a whole-number token that matches only a number standing on its own ("23" in
    "23 mm", not in "1234" or "x23"); returns the numbers that were not tokens yet."""
    numbers, vocab = list(numbers), tokenizer.get_vocab()
    new = [n for n in numbers if str(n) not in vocab]
    tokenizer.add_tokens([AddedToken(str(n), special=False, normalized=False, single_word=True) for n in numbers])
    return new


def corpus_texts(records: Iterable, instructions: Iterable[str]) -> Iterable[str]:
    """The tokenizer's training text: every question and target, plus the fixed prompt instructions."""
    yield from instructions
    for record in records:
        yield record.question
        yield record.target


def image_token_id(tokenizer) -> int:
    """The id of ``<image>`` (raises if the tokenizer lacks it, e.g. a foreign checkpoint)."""
    token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(f"tokenizer has no {IMAGE_TOKEN} token")
    return int(token_id)
