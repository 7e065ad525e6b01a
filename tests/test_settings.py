"""Settings declared once (core/schema.py) reach both the command line and the Fine-tune tab's form."""
import gradio as gr
import pytest

from core.cli import build_parser
from core.errors import InputError
from core.schema import settings_of
from core.training import TrainSettings
from ui.settings_form import settings_fields, values_of


def test_every_cli_training_setting_is_a_train_flag_left_unset_unless_given():
    args = build_parser().parse_args(["train", "--dataset", "d", "--weight-decay", "0.01", "--learning-rate", "0.1",
                                      "--quantize", "none", "--max-steps", "3"])
    given = {"weight_decay": 0.01, "learning_rate": 0.1, "quantize": "none", "max_steps": 3}
    for f in settings_of(TrainSettings, "cli"):
        assert getattr(args, f.name) == given.get(f.name), f.name  # None: the preset's value applies
    settings = TrainSettings.from_preset("balanced", **{f.name: getattr(args, f.name)
                                                        for f in settings_of(TrainSettings, "cli")})
    assert (settings.weight_decay, settings.learning_rate, settings.epochs) == (0.01, 0.1, 12)  # epochs: balanced's
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--dataset", "d", "--quantize", "8bit"])  # not one of the choices


def test_the_advanced_form_is_made_from_the_declaration():
    with gr.Blocks():
        form = settings_fields(TrainSettings, TrainSettings.from_preset("quick"))
    declared = settings_of(TrainSettings, "ui")
    assert list(form) == [f.name for f in declared] and "weight_decay" in form
    assert [c.label for c in form.values()] == [f.metadata["label"] for f in declared]
    assert isinstance(form["quantize"], gr.Dropdown) and isinstance(form["target_modules"], gr.Textbox)
    assert form["rank"].precision == 0 and form["learning_rate"].precision is None
    assert form["epochs"].elem_id == "ft-epochs"
    assert form["method"].choices and form["tuning"].choices and isinstance(form["beta"], gr.Number)
    typed = {"method": "sft", "tuning": "dora", "rank": 8.0, "alpha": 16, "dropout": 0.1, "learning_rate": 1e-3,
             "weight_decay": 0.05, "epochs": 2, "batch_size": 4, "grad_accum": 1, "max_length": 256, "seed": 7,
             "target_modules": "", "beta": 0.2, "dpo_sft_weight": 0.0, "quantize": "none"}
    assert set(typed) == set(form)
    values = values_of(TrainSettings, list(form), [typed[name] for name in form])
    assert values["rank"] == 8 and isinstance(values["rank"], int) and "target_modules" not in values
    assert values["tuning"] == "dora" and values["dpo_sft_weight"] == 0.0
    assert TrainSettings.from_preset("quick", **values).weight_decay == 0.05
    with pytest.raises(InputError, match="weight decay"):
        TrainSettings.from_preset("quick", weight_decay=1.5)


def test_environment_settings_are_checked_with_a_clear_message(monkeypatch):
    from core.config import load_settings
    from core.errors import LabError

    monkeypatch.setenv("LAB_DECODE_WEIGHTS", "BF16")
    assert load_settings().decode_weights == "bf16"
    monkeypatch.setenv("LAB_DECODE_WEIGHTS", "int4")
    with pytest.raises(LabError, match="LAB_DECODE_WEIGHTS must be one of auto, fp32, bf16, int8, got 'int4'"):
        load_settings()
    monkeypatch.delenv("LAB_DECODE_WEIGHTS")
    monkeypatch.setenv("LAB_TOP_K", "four")
    with pytest.raises(LabError, match="LAB_TOP_K must be a whole number, got 'four'"):
        load_settings()
