"""The experiment folder a search writes and the analysis reads, without Ray.

* :mod:`hiercls.experiment.layout`: the folder's file names, the trial-index key, how a trial's seed and
  training config are made (by the trainable and again by the analysis), the Pareto mask;
* :mod:`hiercls.experiment.state`: Ray Tune's saved experiment state, read as plain JSON;
* :mod:`hiercls.experiment.parts`: the parts of a search grown after the fact (``grow-<k>`` folders);
* :mod:`hiercls.experiment.study`: where the search's Optuna study is kept, and loading it;
* :mod:`hiercls.experiment.lock`: one driver at a time per experiment.

The search (:mod:`hiercls.tune`) writes these files; :mod:`analysis` only reads them.
"""
