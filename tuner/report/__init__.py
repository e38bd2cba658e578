"""Tables and plots from a results folder, one module a subject; callers import the module they need.

    model.py       best/'s reports of the retrained model: confusion matrix, classification report, curves
    experiment.py  plots/ of a search: learning curves, parameters, importance, rungs (then search.py's)
    search.py      the Optuna-style search plots: parallel coordinates, contour, history, intermediate, Pareto
    importance.py  parameter importance (Optuna's fANOVA) over the finished trials
    compare.py     results/comparison.md/.csv/.html/.tex across experiments
    figures.py     what every figure shares (resolution, saving, label shortening)
    webpage.py     report.html (one self-contained page of an experiment) and comparison.html

The results files are read through tuner/rundir.py.
"""
