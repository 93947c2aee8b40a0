"""The report: the helpers the numbered notebooks call (set-up, tables, the EDA figures) and the
papermill runner that executes them into ``reports/`` (``make all``).

The top stage of the package: it may import any stage below; only the command line, the app and
the notebooks import it.
"""
