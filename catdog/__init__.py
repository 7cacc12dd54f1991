"""catdog: build, compare and serve a cat-vs-dog image classifier end to end.

Packages by concern, each importing only the rows below it (``tests/test_layout.py`` checks it)::

    catdog.cli, catdog.demo                 the ``catdog`` command (dispatch only) and the end-to-end demo
    catdog.evaluation | catdog.serving      report and comparison | the LitServe server (no torch)
    catdog.poutyne | catdog.export          the Poutyne parity trainer | ONNX export and int8
    catdog.training                         network, BatchNorm policy, optimizer, LightningModule, CLI
    catdog.data                             sample data, fusion, splits, transforms, the data module
    catdog.metrics, config_files, utils     every number from predictions; packaged configs; small helpers
    catdog                                  CLASSES, DISPLAY_NAMES, CatDogError (this module: imports nothing)

``catdog.model``, ``catdog.callbacks`` and ``catdog.serve`` are import paths kept from the flat layout.
"""

__version__ = "0.1.0"

#: Class order used everywhere: index 0 is cat, index 1 is dog.
CLASSES: tuple[str, str] = ("cat", "dog")
#: Display names, by class index, as served and reported.
DISPLAY_NAMES: tuple[str, str] = ("Cat", "Dog")


class CatDogError(Exception):
    """An error a user can fix: the message names the file or argument and what to do.

    The ``catdog`` command prints it without a traceback and exits with status 2.
    """
