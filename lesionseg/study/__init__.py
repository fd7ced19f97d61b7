"""The study runner: a grid of training runs (loss × head × seed × fold, any config key), restartable.

:mod:`~lesionseg.study.grid` plans the cells, :mod:`~lesionseg.study.runner` runs them through the
ordinary train → infer → evaluate commands into ``results.csv``, :mod:`~lesionseg.study.summary`
makes the mean ± sd table and the TP-against-FP plot.
"""
