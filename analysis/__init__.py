"""The analysis of finished hyperparameter searches, offline (no Ray cluster, no unpickling):

* :mod:`analysis.rank` (``python -m analysis.rank``): one row per trial, ranks, Pareto fronts, tables
  and the plots of :mod:`analysis.plots`;
* :mod:`analysis.export` (``python -m analysis.export``): the chosen trial as a plain training config;
* :mod:`analysis.compare` (``python -m analysis.compare``): test metrics of training runs, seeds grouped
  as mean ± 95 % confidence interval;
* :mod:`analysis.transfer` (``python -m analysis.transfer``): rank correlations (Spearman, Kendall, bootstrap
  intervals) between a cheap and an expensive experiment over the same configurations;
* :mod:`analysis.experiment`: loading an experiment folder (:func:`load_experiment`).
"""
