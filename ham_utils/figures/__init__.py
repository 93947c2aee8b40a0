"""Figures drawn from arrays and tables they are given: training curves, evaluation figures and
comparisons of runs, on one shared base (a Figure that renders once in Jupyter).

Below every stage that draws (training, evaluation, explain, studies, report), so it imports
only :mod:`ham_utils.config`: a figure never computes a pipeline result itself, its caller
passes it in.
"""
