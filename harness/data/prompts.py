"""Prompts: how a causal-LM example is written as text, so training and generation see the same tokens.

With a chat template the prompt is the user turn plus the generation prompt and the response is the
assistant turn as the template writes it; without one, the prompt ends in a newline and the response
follows as is. `encode_prompt` is where generation starts; the end token closes every response.
"""

from __future__ import annotations


def end_token_id(tokenizer) -> int:
    """The token that ends a response: eos, or [SEP] for BERT-style tokenizers that have no eos."""
    for token_id in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if token_id is not None:
            return token_id
    raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token or sep_token to end responses with; "
                     f"set tokenizer.eos_token")


def pad_token_id(tokenizer) -> int:
    """Padding id; any id works (attention_mask and labels hide it), so fall back to the end token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_token_id(tokenizer)


def prompt_text(tokenizer, prompt: str) -> str:
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return prompt + "\n"


def response_text(tokenizer, prompt: str, response: str) -> str:
    """The text after the prompt: the assistant turn as the chat template writes it, or the response."""
    if not tokenizer.chat_template:
        return response
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    head = prompt_text(tokenizer, prompt)
    if not full.startswith(head):
        raise ValueError("the tokenizer's chat template does not extend the generation prompt with the "
                         f"assistant turn ({head!r} is not a prefix of {full!r}); cannot mask the prompt")
    return full[len(head):]


def leading_bos(tokenizer) -> list[int]:
    """A leading bos where the tokenizer has one and no chat template writes it."""
    return [] if tokenizer.chat_template or tokenizer.bos_token_id is None else [tokenizer.bos_token_id]


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Prompt token ids exactly as training sees them before the response; generation starts here."""
    return leading_bos(tokenizer) + tokenizer(prompt_text(tokenizer, prompt), add_special_tokens=False)["input_ids"]
