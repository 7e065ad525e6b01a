"""What a preference fine-tune (DPO) is judged by: how much more likely the model makes the chosen answer than the
rejected one. TRL's DPOTrainer does the training (core/training_run.py); this measures the pairs before and after,
so a run can show that it moved the model the way the votes asked."""
from __future__ import annotations

import torch

MARGIN_PAIRS = 32  # pairs measured before and after a run: enough for a stable mean, a few seconds on a CPU


def completion_log_prob(model, tokenizer, prompt: list[dict], completion: list[dict]) -> float:
    """log P(completion | prompt) under the model: the sum over the completion's tokens, as the chat template
    lays them out (the same tokens DPO scores)."""
    prompt_text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([tokenizer(full_text, add_special_tokens=False)["input_ids"]], device=model.device)
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    targets = ids[0, 1:]
    token_log_probs = logits.log_softmax(-1).gather(-1, targets[:, None])[:, 0]
    return float(token_log_probs[len(prompt_ids) - 1:].sum())


def preference_margins(model, tokenizer, pairs: list[dict], limit: int = MARGIN_PAIRS) -> dict | None:
    """Over the first `limit` pairs: the mean of log P(chosen) - log P(rejected), and the share of pairs whose
    chosen answer is the more likely. None without pairs."""
    pairs = pairs[:limit]
    if not pairs:
        return None
    was_training = model.training
    model.eval()
    try:
        margins = [completion_log_prob(model, tokenizer, p["prompt"], p["chosen"])
                   - completion_log_prob(model, tokenizer, p["prompt"], p["rejected"]) for p in pairs]
    finally:
        model.train(was_training)
    return {"pairs": len(margins), "mean_margin": round(sum(margins) / len(margins), 3),
            "chosen_more_likely": round(sum(m > 0 for m in margins) / len(margins), 3)}
