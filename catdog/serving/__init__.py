"""``catdog serve``: serve exported ONNX models over HTTP with LitServe, one endpoint per model.

No module here imports torch (directly or through its imports): onnxruntime, numpy, Pillow and
LitServe only, so the serving install (``pip install 'catdog[serve]'``) and its container stay small.

Endpoints:

* ``POST /predict/<name>``: an image as a multipart upload (field ``file``) or as a raw body with an
  ``image/*`` (or ``application/octet-stream``) content type. Answer::

      {"model": "pretrained", "label": "Dog", "class_id": 1, "probabilities": {"Cat": 0.03, "Dog": 0.97}}

* ``GET /health``: ``200 {"status": "ok", "models": {...}}`` once every model's workers are loaded,
  ``503 {"error": "not_ready", "detail": ..., "models": {...}}`` with each model's state before, and
  while a dead worker is being replaced.
* Every error is JSON ``{"error": <code>, "detail": <message>}`` with a 4xx status for client mistakes:
  ``400 empty_body | invalid_image | bad_request``, ``404 unknown_model | not_found``,
  ``405 method_not_allowed``, ``413 upload_too_large | image_too_large``, ``415 unsupported_media_type``,
  ``422 missing_file``; and ``503 worker_restarted`` or ``504 timeout`` when no answer came within
  ``--timeout`` (every request is answered within it).

Modules, in the order a request meets them:

* :mod:`catdog.serving.cli`: the options (one table, each with its environment variable) and ``main``;
* :mod:`catdog.serving.models`: loading an ONNX file and checking the metadata ``catdog export`` wrote;
* :mod:`catdog.serving.http`: reading the upload, decoding the image, JSON errors (HTTP processes);
* :mod:`catdog.serving.api`: the LitServe API that batches and runs onnxruntime (inference workers);
* :mod:`catdog.serving.app`: the server: ``/health``, extension points, signals;
* :mod:`catdog.serving.supervise`: dead workers and HTTP processes replaced, a dead manager stops the server.

Each upload is read, size-checked, decoded (EXIF orientation, first frame, any mode to RGB) and resized
on its own in the HTTP process, before it is queued; only valid images reach the batching inference
worker, so one bad upload never fails the good ones batched with it. The worker normalises (the same
:func:`catdog.data.transforms.eval_transform` as training's eval, split in two), batches, runs onnxruntime
and answers each request. The preprocessing is read from the ONNX file's metadata.

SIGTERM and SIGINT stop the server and all its worker processes within a few seconds (it may run as
PID 1 in a container); exit status 0. Status 1: the server stopped itself (its manager process died, or
a model crash-loops); status 2: a start-up error. The options and their environment variables:
``catdog serve --help`` and ``docs/serving.md``.

May import :mod:`catdog.data.transforms`, :mod:`catdog.export.runtime`, :mod:`catdog.utils` and
:mod:`catdog` (all torch-free); never training, the trainers, evaluation or the CLI.
"""
