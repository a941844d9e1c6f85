"""The CSV metrics log, continued (not deleted) by a resumed run and rewritten atomically."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from pretrain.internals import csv_writer, set_csv_writer
from pretrain.run.files import write_text


class _ContinuingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:  # see internals.OVERRIDDEN
        # Lightning (2.6) deletes an existing metrics.csv here; a resumed run appends to it.
        path = Path(self.metrics_file_path)
        if path.is_file():
            with open(path, newline="") as f:
                self.metrics_keys = next(csv.reader(f), [])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:  # see internals.OVERRIDDEN
        # A new column means rewriting the whole file: through a temporary file, so a kill
        # during it leaves the old log whole.
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.metrics_file_path, text.getvalue())


class ContinuingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger``, except that ``metrics.csv`` survives a resume: the resumed run
    appends its rows (those logged between the last checkpoint and the interruption then
    appear twice, the second time as redone) and new columns never leave a half-written file."""

    @property
    def experiment(self) -> ExperimentWriter:
        return csv_writer(self) or set_csv_writer(self, _ContinuingWriter(log_dir=self.log_dir))
