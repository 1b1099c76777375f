"""The one place where chat messages for the model are built: trainer, evaluator and service all call this.

The instruction line tells the model which kind of answer is wanted. Easy and Medium targets reason step by
step, Hard targets are the answer alone; without a distinguishing instruction the model could not know at
serving time which of the two it is being asked for.
"""

from __future__ import annotations

REASONING_INSTRUCTION = "Think step by step."
BRIEF_INSTRUCTION = "Answer briefly."
INSTRUCTIONS = (REASONING_INSTRUCTION, BRIEF_INSTRUCTION)


def instruction_for_stage(stage: str) -> str:
    """Easy/Medium records ask for reasoning; Hard records (answer-only targets) ask for a brief answer."""
    if stage not in ("easy", "medium", "hard"):
        raise ValueError(f"unknown stage {stage!r}")
    return BRIEF_INSTRUCTION if stage == "hard" else REASONING_INSTRUCTION


def user_text(question: str, reasoning: bool) -> str:
    """The text of a user turn: the question, a newline, then the instruction."""
    return f"{question.strip()}\n{REASONING_INSTRUCTION if reasoning else BRIEF_INSTRUCTION}"


def build_messages(question: str, reasoning: bool = True, with_image: bool = True,
                   target: str | None = None) -> list[dict]:
    """Chat messages (OpenAI-style content parts) for one question about one image.

    ``with_image`` is False only for later turns of a multi-question training sequence, which share the
    first turn's image. ``target`` appends the assistant turn (training). The chat template renders the
    user turn as ``<image>\\n{question}\\n{instruction}``.
    """
    content: list[dict] = [{"type": "image"}] if with_image else []
    content.append({"type": "text", "text": user_text(question, reasoning)})
    messages = [{"role": "user", "content": content}]
    if target is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": target}]})
    return messages


def record_messages(record, with_image: bool = True, with_target: bool = True) -> list[dict]:
    """Messages for a VQA record: its question with its stage's instruction and, for training, its target."""
    return build_messages(record.question, reasoning=record.stage != "hard", with_image=with_image,
                          target=record.target if with_target else None)


def render_prompt(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The prompt text exactly as transformers and vLLM render it from the checkpoint's chat template."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
