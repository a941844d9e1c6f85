"""Run folders of a sweep named by their overrides (pretrain/run/run_names.py)."""

from __future__ import annotations

from hydra.core.override_parser.overrides_parser import OverridesParser

from pretrain.run.run_names import MAX_LENGTH, run_folder_name


def test_plain_overrides_read_as_given_in_their_order():
    assert run_folder_name(["seed=3", "encoder=none"], 7) == "seed-3+encoder-none"
    assert (
        run_folder_name(["+trainer.limit_train_batches=5", "task=gan"], 0) == "+trainer.limit_train_batches-5+task-gan"
    )


def test_no_overrides_the_job_number():
    assert run_folder_name([], 4) == "4"


def test_encoder_paths_become_their_run_folders_name_and_a_hash_that_keeps_them_apart():
    a = run_folder_name(["encoder=multirun/x/task-gan+seed-0/encoder.safetensors"], 0)
    b = run_folder_name(["encoder=elsewhere/task-gan+seed-0/encoder.safetensors"], 0)
    assert a.startswith("encoder-task-gan+seed-0.") and b.startswith("encoder-task-gan+seed-0.") and a != b
    assert run_folder_name(["encoder=/tmp/mine.safetensors"], 0).startswith("encoder-mine.")


def test_names_are_one_safe_folder_that_hydra_reads_unquoted_and_unlike_for_unlike_values():
    names = {run_folder_name([f"data.exclude_classes={v}", "seed=1"], 0) for v in ("[a,b]", "[a b]", "_a_b_", "a=b")}
    assert len(names) == 4
    for name in names:
        assert "/" not in name and "=" not in name and "," not in name and " " not in name
        # a path through the folder is one plain value on a Hydra command line
        [override] = OverridesParser.create().parse_overrides([f"encoder=sweep/{name}/encoder.safetensors"])
        assert override.value() == f"sweep/{name}/encoder.safetensors"


def test_long_names_are_cut_and_stay_apart():
    many = [f"option_{i}=value" for i in range(40)]
    a, b = run_folder_name([*many, "seed=0"], 0), run_folder_name([*many, "seed=1"], 0)
    assert len(a) == len(b) == MAX_LENGTH and a != b
