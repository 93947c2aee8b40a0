"""Studies of several runs: sweeps that train and evaluate every variant of a grid file, and
paired comparisons of finished runs on the same test images.

Imports the stages below it: training and evaluation, and what they import.
"""
