"""pretrain/internals.py against the installed Lightning and Hydra: an upgrade that moves or reshapes a
private name we rely on fails here, by name, rather than somewhere in a run."""

from __future__ import annotations

import importlib
import inspect
from importlib.metadata import version

import lightning as L
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

from pretrain import internals
from pretrain.run.callbacks.last_checkpoint import LastCheckpoint
from pretrain.run.csv_log import ContinuingCSVLogger, _ContinuingWriter


def test_written_for_the_installed_versions():
    for package, written_for in internals.WRITTEN_FOR.items():
        installed = ".".join(version(package).split(".")[:2])
        assert installed == written_for, (
            f"{package} {installed} is installed; pretrain/internals.py was written for {written_for}: "
            "check each function there against the new version's source, then update WRITTEN_FOR"
        )


def overriding_class(module: str, cls: str) -> type:
    if cls == "SlurmInfoWatcher":
        pytest.importorskip("submitit")
        from hydra_plugins.pretext_sweeper.slurm_launcher import job_states

        return type(job_states(1.0))
    return {"ModelCheckpoint": LastCheckpoint, "ExperimentWriter": _ContinuingWriter}[cls]


@pytest.mark.parametrize("module,cls,method,why", internals.OVERRIDDEN, ids=lambda v: v if "." not in v else None)
def test_overridden_private_methods_exist_with_our_signature(module, cls, method, why):
    framework = getattr(importlib.import_module(module), cls)
    assert callable(getattr(framework, method, None)), f"{module}.{cls}.{method} is gone; it was needed: {why}"
    ours = overriding_class(module, cls)
    assert issubclass(ours, framework) and method in vars(ours)
    expected = list(inspect.signature(getattr(framework, method)).parameters)
    assert list(inspect.signature(getattr(ours, method)).parameters) == expected, f"{cls}.{method} changed shape"


def test_args_parser_reads_multirun_and_overrides():
    args = internals.args_parser().parse_args(["-m", "seed=1", "task=gan"])
    assert args.multirun is True and args.overrides == ["seed=1", "task=gan"]


def test_locate_finds_objects_and_refuses_bad_paths():
    assert internals.locate("pretrain.internals.locate") is internals.locate
    with pytest.raises(ImportError):
        internals.locate("pretrain.no_such_module.thing")


def test_basic_sweeper_has_what_tolerant_sweeper_uses():
    from hydra.plugins.sweeper import Sweeper

    basic = internals.basic_sweeper()
    assert issubclass(basic, Sweeper)
    for name in ("_parse_config", "split_arguments", "get_job_batch", "is_done", "validate_batch_is_legal"):
        assert callable(getattr(basic, name, None)), name
    sweeper = basic(max_batch_size=None, params={"seed": "1,2"})
    assert internals.configured_sweep(sweeper) == ["seed=1,2"]


def test_job_error_is_the_failed_jobs_exception():
    error = ValueError("boom")
    failed = JobReturn(status=JobStatus.FAILED)
    failed.return_value = error
    assert internals.job_error(failed) is error


def test_ddp_arguments():
    assert internals.ddp_arguments(DDPStrategy(find_unused_parameters=True)) == {"find_unused_parameters": True}
    assert internals.ddp_arguments(SingleDeviceStrategy("cpu")) == {}


class Recorder(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.seen: list[tuple[int, bool]] = []

    def training_step(self, batch, batch_idx):
        self.seen.append((internals.logged_step(self.trainer), internals.logs_this_step(self.trainer)))
        return self.layer(batch[0]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_internals_in_a_run(tmp_path):
    model = Recorder()
    checkpoint = LastCheckpoint(tmp_path)
    trainer = L.Trainer(
        max_epochs=1,
        log_every_n_steps=2,
        logger=ContinuingCSVLogger(tmp_path, name="", version=""),
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(4, 2)), batch_size=1)
    trainer.fit(model, data)
    assert model.seen == [(0, False), (1, True), (2, False), (3, True)]
    assert internals.logged_step(trainer) == 4
    # the last epoch's end wrote last.ckpt through save_last_checkpoint, and _save_checkpoint recorded it
    assert checkpoint.written == (tmp_path / "last.ckpt", 4) and checkpoint.written[0].is_file()
    assert internals.save_last_checkpoint(checkpoint, trainer) is False  # that step is saved already
    logger = trainer.logger
    assert isinstance(internals.csv_writer(logger), _ContinuingWriter) and logger.experiment is logger.experiment


def test_litdata_storage_client():
    fs_provider = pytest.importorskip("litdata.streaming.fs_provider")
    assert list(inspect.signature(fs_provider._get_fs_provider).parameters)[0] == "remote_filepath"
