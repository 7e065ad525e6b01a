"""Several callers at once share the model's one decode batch (continuous batching): each gets what it gets alone,
a short answer asked while a long one runs is not held behind it, and a caller who leaves does not disturb the
others. The real bundled model, several threads, as Gradio's workers call it for simultaneous visitors."""
import contextlib
import threading

from conftest import lean_steps_counted
from core.decode_loop import mergeable
from core.generation import Delta, GenerationConfig, RowDone, stream_chat

GREEDY = GenerationConfig(max_new_tokens=24, stop_loops=False)
SAMPLED = GenerationConfig(max_new_tokens=24, stop_loops=False, temperature=0.8, seed=3)
LONG = GenerationConfig(max_new_tokens=160, min_new_tokens=160, stop_loops=False)  # runs its full length


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def reply(generator, conversation, config) -> RowDone:
    return next(e for e in stream_chat(generator, [conversation], config) if isinstance(e, RowDone))


@contextlib.contextmanager
def forward_passes(generator, monkeypatch):
    """A list that gets an item for each forward pass of the model: its forward, or a lean step (core/lean_step.py)."""
    calls = []
    hook = generator.model.register_forward_pre_hook(lambda module, args: calls.append(1))
    try:
        with lean_steps_counted(monkeypatch, calls):
            yield calls
    finally:
        hook.remove()


def test_visitors_asking_at_once_each_get_what_they_get_alone(lab):
    """Four visitors, one with a prompt long enough to be read in two pieces and one sampling with a seed, ask at
    the same moment: the rows join one batch as they arrive, and each answer is the one that visitor gets alone
    (exactly, on a CPU in fp32 or bf16; elsewhere each is answered)."""
    from core.decode_loop import PREFILL_CHUNK_TOKENS

    generator = lab.models.generator
    visits = [
        (chat("What is the capital of France? Answer in three words."), GREEDY),
        (chat("Summarise this in one line: " + "the old mill by the lake grinds corn and wheat. " * 60), GREEDY),
        (chat("Name three colours."), SAMPLED),
        (chat("Why is the sky blue?"), GREEDY),
    ]
    assert reply(generator, *visits[1]).stats.prompt_tokens > PREFILL_CHUNK_TOKENS  # read in pieces
    alone = [reply(generator, *visit).text for visit in visits]
    together: list = [None] * len(visits)
    start = threading.Barrier(len(visits))

    def visit(i: int) -> None:
        start.wait()
        together[i] = reply(generator, *visits[i])

    threads = [threading.Thread(target=visit, args=(i,)) for i in range(len(visits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(isinstance(done, RowDone) and done.text for done in together), together
    if generator.device == "cpu":
        assert [done.text for done in together] == alone


def test_a_short_answer_asked_during_a_long_one_is_not_held_behind_it(lab):
    """With one answer at a time, a visitor asking "Hi" behind a 160-token answer waited for all of it; now the
    short question joins the running batch and is answered while the long one still streams."""
    generator = lab.models.generator
    short = chat("Say hello in one word.")
    short_alone = reply(generator, short, GREEDY).text
    streaming, long_done = threading.Event(), threading.Event()
    deltas = []

    def long_visitor() -> None:
        for event in stream_chat(generator, [chat("Tell me a very long story about a lighthouse.")], LONG):
            if isinstance(event, Delta):
                deltas.append(event.text)
                if len(deltas) == 5:
                    streaming.set()
        long_done.set()

    thread = threading.Thread(target=long_visitor)
    thread.start()
    assert streaming.wait(timeout=120)
    answered = reply(generator, short, GREEDY)
    short_finished_first = not long_done.is_set()
    thread.join(timeout=300)
    assert short_finished_first, "the short answer waited for the long one to finish"
    assert long_done.is_set() and len(deltas) >= 100
    if generator.device == "cpu":
        assert answered.text == short_alone


def test_a_visitor_who_leaves_does_not_disturb_the_others(lab):
    """One visitor closes the page mid-answer: their row leaves the batch, the other's answer is unchanged, and
    the batch is empty once the other is answered."""
    generator = lab.models.generator
    stay = chat("Tell me about the moon.")
    stay_alone = reply(generator, stay, GREEDY).text
    leaving = stream_chat(generator, [chat("Tell me a very long story about a lighthouse.")], LONG)
    next(leaving)  # the leaving visitor's first words are on screen
    result: list = []
    thread = threading.Thread(target=lambda: result.append(reply(generator, stay, GREEDY)))
    thread.start()
    leaving.close()  # what Gradio does when a page closes
    thread.join(timeout=300)
    assert result and result[0].text
    if generator.device == "cpu":
        assert result[0].text == stay_alone
    assert generator.batcher.loop is None and not generator.batcher.waiting  # nothing left running or waiting


def test_a_row_alone_that_copies_its_prompt_takes_fewer_steps_and_answers_the_same(lab, monkeypatch):
    """Prompt lookup: a row decoding alone checks, in one forward pass, the tokens that its prompt suggests come
    next (a RAG answer copies from its passages). The greedy answer is the one plain `generate` gives (exactly, in
    on a CPU), in fewer forward passes than tokens; with it switched off, one pass per token."""
    import core.decode_loop

    generator = lab.models.generator
    passage = ("The Brindlewick Lantern Company was founded in 1911 by Oswin Thackery in Port Ellery. Its first "
               "lantern, the Thackery Mark One, burned whale oil and sold for four shillings.")
    conversation = chat(f"{passage}\n\nRepeat the text above word for word.")
    config = GenerationConfig(max_new_tokens=40, stop_loops=False)

    def counted() -> tuple[RowDone, int]:
        with forward_passes(generator, monkeypatch) as calls:
            return reply(generator, conversation, config), len(calls)

    done, passes = counted()
    saved, core.decode_loop.PROMPT_LOOKUP_TOKENS = core.decode_loop.PROMPT_LOOKUP_TOKENS, 0
    try:
        plain_done, plain_passes = counted()
    finally:
        core.decode_loop.PROMPT_LOOKUP_TOKENS = saved
    encoded = generator.tokenizer.apply_chat_template(conversation, add_generation_prompt=True, return_tensors="pt",
                                                      return_dict=True).to(generator.device)
    output = generator.model.generate(**encoded, max_new_tokens=40, do_sample=False)
    alone = generator.tokenizer.decode(output[0, encoded["input_ids"].shape[1]:], skip_special_tokens=True)
    assert done.stats.new_tokens >= 20, done.text
    # The prefill gives the first token, each pass one more (and one more pass may pick the end token).
    assert plain_done.stats.new_tokens <= plain_passes <= plain_done.stats.new_tokens + 1
    assert passes < 0.75 * done.stats.new_tokens, (passes, done.stats.new_tokens, done.text)
    if generator.device == "cpu":
        assert done.text == plain_done.text == alone


def test_rows_that_start_together_decode_in_step_and_answer_the_same(lab, monkeypatch):
    """A call that waits for all its rows (an evaluation, generated questions) asks them to start together: every
    row's first token comes before any row's second, in fewer forward passes than when the first rows read start
    decoding while the rest are still being read, with the same answers (exactly, on a CPU)."""
    generator = lab.models.generator
    passage = "The lighthouse keeper of Port Ellery wrote a log of every ship that passed the harbour wall. "
    conversations = [chat(passage * 12 + f"Question {i}: what did the keeper write?") for i in range(3)]
    conversations.append(chat("Name three colours."))
    config = GenerationConfig(max_new_tokens=12, min_new_tokens=12, stop_loops=False)

    def run(together: bool) -> tuple[list[tuple[int, int]], dict[int, str], int]:
        order, texts = [], {}
        seen = [0] * len(conversations)
        with forward_passes(generator, monkeypatch) as calls:
            for event in stream_chat(generator, conversations, config, together=together):
                if isinstance(event, Delta):
                    seen[event.row] += 1
                    order.append((event.row, seen[event.row]))
                elif isinstance(event, RowDone):
                    texts[event.row] = event.text
        return order, texts, len(calls)

    order, texts, passes = run(together=True)
    apart_order, apart_texts, apart_passes = run(together=False)
    assert len(texts) == len(conversations) and all(texts.values())
    first_seconds = min(i for i, (_, n) in enumerate(order) if n == 2)
    assert {row for row, n in order[:first_seconds] if n == 1} == set(range(len(conversations))), order
    if generator.device == "cpu" and mergeable(generator.model):  # a GPU reads all four in one prefill anyway
        # Apart, a row read early decodes while later prompts are still being read (the long ones are read apart).
        apart_first_seconds = min(i for i, (_, n) in enumerate(apart_order) if n == 2)
        assert len({row for row, n in apart_order[:apart_first_seconds] if n == 1}) < len(conversations), apart_order
        assert passes < apart_passes, (passes, apart_passes)
        assert texts == apart_texts
    assert generator.batcher.loop is None and not generator.batcher.waiting


def test_in_bf16_each_row_answers_together_as_it_does_alone(lab):
    """16-bit weights on a CPU (LAB_DECODE_WEIGHTS=bf16) round each product once per layer, so anything that
    computes a row differently beside other rows (batched attention over a left-padded cache, a one-row matrix
    path) flips near-ties: before core/row_attention.py and the probe in core/cpu_linear.py, 5 of 8 such answers
    matched. Now a row's answer is the same alone (with prompt lookup), in one call with the others (read in
    groups, or all first), and beside another visitor's call."""
    import pytest
    import torch

    from core.lab import Lab

    if lab.settings.resolved_device != "cpu":
        pytest.skip("bf16 weights are the CPU's option; a GPU always decodes in 16-bit with its own kernels")
    generator = Lab(lab.settings.with_(decode_weights="bf16")).models.generator
    assert generator.model.dtype == torch.bfloat16
    passage = ("The Brindlewick Lantern Company was founded in 1911 by Oswin Thackery in Port Ellery. Its first "
               "lantern, the Thackery Mark One, burned whale oil and sold for four shillings. ")
    conversations = [chat("Name three colours."), chat("Why is the sky blue?"),
                     chat(passage * 6 + "\nWho founded the Brindlewick Lantern Company, and where?"),
                     chat(passage + "\nWhat did the first lantern burn?"), chat("Write a haiku about rain."),
                     chat("Explain photosynthesis briefly.")]
    config = GenerationConfig(max_new_tokens=40, stop_loops=False)

    def texts(call: list, together: bool = False) -> list[str]:
        done = {e.row: e.text for e in stream_chat(generator, call, config, together=together)
                if isinstance(e, RowDone)}
        return [done[i] for i in range(len(call))]

    alone = [texts([c])[0] for c in conversations]
    assert texts(conversations) == alone
    assert texts(conversations, together=True) == alone
    beside: list = [None, None]
    start = threading.Barrier(2)

    def visit(i: int, call: list) -> None:
        start.wait()
        beside[i] = texts(call)

    threads = [threading.Thread(target=visit, args=(0, conversations[:3])),
               threading.Thread(target=visit, args=(1, conversations[3:]))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert beside[0] + beside[1] == alone
