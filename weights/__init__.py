"""The shipped model files, installed as the ``fkpbatch.weights`` package (pyproject.toml maps this
folder there) so that :mod:`importlib.resources` finds them in a wheel and in an editable install.
The table of shipped models is :mod:`fkpbatch.zoo`; the model card is README.md here."""
