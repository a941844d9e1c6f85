"""``python -m finetune.report PATH...``: did pretraining help, over many seeds?

Reads the ``results.json`` of fine-tuning runs (files, run folders or whole sweeps), groups
the runs into configurations (everything but the seed), and reports per configuration the
number of runs, mean, standard deviation and 95% confidence interval of the mean (Student's
t); and for every pretrained configuration, the paired difference to the from-scratch
runs with the same settings and architecture, seed by seed, with its 95% interval and a
paired t-test's p-value. Writes ``report.md``, ``report.csv`` (one row per configuration),
``runs.csv`` (one row per run) and ``report.png`` (every seed a point). Runs over several label
budgets or evaluation modes (``experiment=protocol``) are laid out as the evaluation protocol's
curves instead (``finetune.report.protocol``).

What makes two runs the same configuration: their resolved configs, less

- the seed and what follows from it (``seed``, ``data.seed``);
- what says where or how a run ran, not what it computed (``RUN_SPECIFIC``);
- the encoder file's path, the ``backbone`` group and ``reuse_blocks``: the runs' own record of
  the encoder's content (SHA-256) and of the architecture that was trained stands for them,
  so moved or copied encoder files still group together, and different encoders never do;
- for from-scratch runs, the ``schedule`` (nothing is frozen without an encoder).
"""
