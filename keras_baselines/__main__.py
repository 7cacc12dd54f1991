"""``python -m keras_baselines``."""

from keras_baselines.cli import main

raise SystemExit(main())
