"""catdog: build, compare and serve a cat-vs-dog image classifier end to end."""

__version__ = "0.1.0"

#: Class order used everywhere: index 0 is cat, index 1 is dog.
CLASSES: tuple[str, str] = ("cat", "dog")
#: Display names, by class index, as served and reported.
DISPLAY_NAMES: tuple[str, str] = ("Cat", "Dog")


class CatDogError(Exception):
    """An error a user can fix: the message names the file or argument and what to do.

    The ``catdog`` command prints it without a traceback and exits with status 2.
    """
