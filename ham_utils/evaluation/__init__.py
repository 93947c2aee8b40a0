"""The evaluation stage: a run's predictions on its test split (and an external set), metrics
and their bootstrap intervals, calibration, operating points, selective prediction, subgroups,
the out-of-distribution check and the model card.

Imports the stages below it (data, model, figures, runs, and train's tracking); one run at a
time: comparisons of several runs live in :mod:`ham_utils.studies`.
"""
