"""Preference pairs, the training data of DPO: a prompt, the answer preferred (`chosen`) and the one not
(`rejected`). Read from the layouts in use (TRL's conversational and plain ones, with the prompt given or implicit
in the two conversations) into one stored form, the conversational one with an explicit prompt:

    {"prompt": [{"role": "user", "content": ...}], "chosen": [{"role": "assistant", ...}], "rejected": [...]}

The Compare tab's votes export exactly this (core/votes.py)."""
from __future__ import annotations

ROLES = ("system", "user", "assistant")
PROMPT_KEYS = ("prompt", "question", "instruction")


def is_preference(record: dict) -> bool:
    return "chosen" in record or "rejected" in record


def preference_pair(record: dict) -> tuple[dict, str]:
    """One record as a stored pair, and its layout ("conversational", "plain" or "implicit-prompt"). Raises
    ValueError saying what is wrong (the caller adds the line number)."""
    missing = [key for key in ("chosen", "rejected") if key not in record]
    if missing:
        raise ValueError(f"has no '{missing[0]}' (a preference pair needs 'prompt', 'chosen' and 'rejected')")
    prompt_key = next((key for key in PROMPT_KEYS if key in record), None)
    chosen, rejected = record["chosen"], record["rejected"]
    if prompt_key is None:
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise ValueError("has no 'prompt'; without one, 'chosen' and 'rejected' must be whole conversations that "
                             "start with the same prompt")
        prompt, chosen, rejected = _split_shared_prompt(_messages(chosen, "chosen"), _messages(rejected, "rejected"))
        layout = "implicit-prompt"
    else:
        value = record[prompt_key]
        layout = "conversational" if isinstance(value, list) else "plain"
        prompt = _messages(value, prompt_key) if isinstance(value, list) else [
            {"role": "user", "content": _text(value, prompt_key)}]
        chosen, rejected = _completion(chosen, "chosen"), _completion(rejected, "rejected")
    if not any(m["role"] == "user" for m in prompt):
        raise ValueError("the prompt has no user message")
    if prompt[-1]["role"] == "assistant":
        raise ValueError("the prompt ends with an assistant message; the answers to compare go in 'chosen' and "
                         "'rejected'")
    if _joined(chosen) == _joined(rejected):
        raise ValueError("'chosen' and 'rejected' are the same answer: there is nothing to prefer")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, layout


def _split_shared_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list]:
    # the longest shared start after which both go on with the assistant's answer
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    while shared > 0 and chosen[shared]["role"] != "assistant":
        shared -= 1
    prompt, chosen_rest, rejected_rest = chosen[:shared], chosen[shared:], rejected[shared:]
    if not prompt:
        raise ValueError("'chosen' and 'rejected' do not start with the same prompt")
    return prompt, _completion(chosen_rest, "chosen"), _completion(rejected_rest, "rejected")


def _completion(value, what: str) -> list[dict]:
    """An answer: text, one assistant message, or a list of assistant messages."""
    if isinstance(value, str):
        return [{"role": "assistant", "content": _text(value, what)}]
    if isinstance(value, dict):
        value = [value]
    messages = _messages(value, what)
    if any(m["role"] != "assistant" for m in messages):
        raise ValueError(f"'{what}' must hold the assistant's answer only")
    return messages


def _messages(value, what: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"'{what}' must be text or a non-empty list of {{role, content}} messages")
    out = []
    for i, message in enumerate(value, 1):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"'{what}' message {i} must have 'role' and 'content'")
        if message["role"] not in ROLES:
            raise ValueError(f"'{what}' message {i} has role {message['role']!r}; use one of {', '.join(ROLES)}")
        out.append({"role": message["role"], "content": _text(message["content"], f"{what} message {i}")})
    return out


def _text(value, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{what}' must be text, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"'{what}' is empty")
    return value.strip()


def _joined(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)
