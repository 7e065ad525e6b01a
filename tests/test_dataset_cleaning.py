"""Checking training data before a fine-tune: each kind of problem is found in a crafted set, and the fixed copy
keeps the split while the original stays as it was."""
import json
from pathlib import Path

import pytest

from conftest import cli_here
from core.dataset_cleaning import check
from core.errors import InputError

FACTS = Path(__file__).parent / "data" / "zorblat_facts.jsonl"


def qa(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def crafted() -> tuple[list[dict], dict]:
    examples = [
        qa("Who founded the Zorblat Institute?", "Mirela Quanz founded it."),          # 0 test
        qa("In which year was it founded?", "In 1987."),                               # 1 train
        qa("who founded the zorblat   institute?", "Mirela Quanz founded it."),        # 2 exact copy of 0
        qa("Who founded the Zorblat Institute ?", "Mirela Quanz founded it!"),         # 3 near copy of 0
        qa("What is the motto?", " \u200b ."),                                         # 4 no words
        qa("Tell the whole history.", "word " * 50),                                   # 5 too long
        qa("Who founded the Zorblat Institute?", "A group of friends."),               # 6 asks test question 0
        qa("Where does the cafÃ© get its beans?", "From Vettelborg &amp; Oda."),        # 7 mojibake, entity
        qa("What was lost?", "The letter \ufffd is gone."),                            # 8 lost characters
        qa("Which river runs past Vettelborg?", "The Oda."),                           # 9 clean
    ]
    return examples, {"train": [1, 2, 3, 4, 5, 6, 7, 8, 9], "validation": [], "test": [0]}


def test_each_kind_of_problem_is_found_with_its_fix():
    examples, split = crafted()
    lengths = [12] * len(examples)
    lengths[5] = 70
    found = check(examples, split, lengths, max_length=64)
    where = {kind: [item["index"] for item in problem["found"]] for kind, problem in found["problems"].items()}
    assert where == {"exact_duplicates": [2], "near_duplicates": [3], "empty_answers": [4], "too_long": [5],
                     "test_leakage": [6], "encoding_debris": [4, 7, 8]}, where
    assert found["problems"]["exact_duplicates"]["found"][0]["detail"] == "same as example 0"  # the test copy kept
    assert found["problems"]["too_long"]["found"][0]["detail"] == "70 tokens, training keeps 64"
    assert found["removed"] == [2, 3, 4, 5, 6]
    assert found["repaired"] == {7: qa("Where does the café get its beans?", "From Vettelborg & Oda.")}
    assert "cannot be repaired" in found["problems"]["encoding_debris"]["found"][2]["detail"]

    clean = [examples[i] for i in (0, 1, 9)]
    assert check(clean, {"train": [0, 1, 2]}, [12] * 3, 64)["removed"] == []
    assert not any(p["count"] for p in check(clean, {"train": [0, 1, 2]}, [12] * 3, 64)["problems"].values())


def test_preference_pairs_are_checked_too():
    pair = {"prompt": [{"role": "user", "content": "Q?"}], "chosen": [{"role": "assistant", "content": "Yes."}],
            "rejected": [{"role": "assistant", "content": "..."}]}
    found = check([pair, pair], {"train": [0, 1]}, [10, 10], 64)
    assert found["problems"]["exact_duplicates"]["count"] == 1
    assert found["problems"]["empty_answers"]["count"] == 2  # a rejected answer with no words


def test_the_fixed_copy_keeps_the_split_and_the_original_stays(lab, tmp_path):
    examples, _ = crafted()
    path = tmp_path / "dirty.jsonl"
    path.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in examples))
    before = lab.datasets.import_file(path, "dirty", validation=0.2, test=0.2, seed=3)
    checked = cli_here(["dataset", "clean", "dirty", "--max-length", "64", "--json"], lab.settings.data_dir)
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["clean"] is False and report["problems"]["too_long"]["count"] == 1
    shown = cli_here(["dataset", "clean", "dirty", "--max-length", "64"], lab.settings.data_dir).stdout
    assert "- too long: 1" in shown and "dataset clean dirty --apply" in shown

    applied = cli_here(["dataset", "clean", "dirty", "--max-length", "64", "--apply", "--json"],
                       lab.settings.data_dir)
    assert applied.returncode == 0, applied.stderr
    saved = json.loads(applied.stdout)["saved_as"]
    assert saved["name"] == "dirty-clean" and saved["examples"] == 10 - len(report["removed"])
    old_info, new_info = lab.datasets.info("dirty"), lab.datasets.info("dirty-clean")
    assert old_info.sha256 == before["sha256"] and len(lab.datasets.examples("dirty")) == 10  # untouched
    removed = set(report["removed"])
    for part, indices in old_info.split.items():  # each kept example stays in its part
        kept = [lab.datasets.examples("dirty")[i] for i in indices if i not in removed]
        assert [e["messages"][0]["content"] for e in lab.datasets.examples("dirty-clean", part)] == \
            [e["messages"][0]["content"].replace("cafÃ©", "café") for e in kept]
    assert lab.datasets.clean("dirty-clean", max_length=64)["clean"] is True
    again = lab.datasets.clean("dirty", apply=True, max_length=64)  # replaces its own earlier copy
    assert again["saved_as"]["name"] == "dirty-clean" and new_info.split == lab.datasets.info("dirty-clean").split

    lab.datasets.import_file(FACTS, "facts", validation=0, test=0)
    with pytest.raises(InputError, match="a dataset with this name already exists"):
        lab.datasets.clean("dirty", apply=True, to="facts", max_length=64)  # not a cleaned copy: kept
    with pytest.raises(InputError, match="nothing to fix"):
        lab.datasets.clean("facts", apply=True)
    assert len(lab.datasets.examples("facts")) == 12
