"""``catdog serve``'s options: one table behind the parser, the environment and the docs; model specs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from catdog import CatDogError
from catdog.serving.cli import OPTIONS, build_parser, env_table, parse_model_specs

DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
#: A value for each option that differs from its default (and passes its type and choices).
OTHER_VALUES = {
    "--host": "0.0.0.0",
    "--port": "9001",
    "--max-batch-size": "1",
    "--batch-timeout": "0.5",
    "--workers": "3",
    "--api-servers": "2",
    "--threads": "4",
    "--max-upload-mb": "2.5",
    "--max-image-pixels": "120000000",
    "--timeout": "7",
    "--max-restarts": "2",
    "--max-queue": "16",
    "--api-key": "a-key-of-enough-length",
    "--api-key-file": "/run/secrets/catdog-keys",
    "--log-level": "debug",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for opt in OPTIONS:
        monkeypatch.delenv(opt.env, raising=False)
    return monkeypatch


def test_docs_table_is_the_generated_one() -> None:
    text = DOCS.read_text()
    found = re.search(r"<!-- options-table:start -->\n(.*?)\n<!-- options-table:end -->", text, re.S)
    assert found, f"{DOCS} lacks the options-table markers"
    assert found.group(1) == env_table(), (
        f"{DOCS}: the options table is stale; paste the output of "
        "`python -c 'from catdog.serving.cli import env_table; print(env_table())'` between the markers"
    )
    for opt in OPTIONS:
        assert f"| `{opt.flag}` | `{opt.env}` |" in found.group(1)


def test_defaults_help_and_environment_come_from_the_table(clean_env: pytest.MonkeyPatch) -> None:
    assert set(OTHER_VALUES) == {opt.flag for opt in OPTIONS} - {"--model"}, "a new option needs a test value"
    parser = build_parser()
    defaults = parser.parse_args([])
    help_text = " ".join(parser.format_help().split())
    for opt in OPTIONS:
        assert opt.env in help_text
        if opt.flag == "--model":
            continue
        assert getattr(defaults, opt.dest) == opt.type(opt.default), opt.flag
        if opt.default:  # an option without a default (an API key) shows none
            assert f"({opt.default})" in help_text
    for opt in OPTIONS:
        if opt.flag == "--model":
            continue
        value = OTHER_VALUES[opt.flag]
        assert opt.type(value) != opt.type(opt.default)
        clean_env.setenv(opt.env, value)
        from_env = getattr(build_parser().parse_args([]), opt.dest)
        assert from_env == opt.type(value), opt.env
        clean_env.setenv(opt.env, opt.default)  # the command line wins over the environment
        assert getattr(build_parser().parse_args([opt.flag, value]), opt.dest) == opt.type(value)


#: The defaults docs/serving.md documents, written out here (not read from OPTIONS) so that changing one in
#: the table is a visible decision: the docs, the container and the Kubernetes manifests rely on them.
DOCUMENTED_DEFAULTS = {
    "model": [],
    "host": "127.0.0.1",
    "port": 8000,
    "max_batch_size": 8,
    "batch_timeout": 0.01,
    "workers": 1,
    "api_servers": 0,
    "threads": 0,
    "max_upload_mb": 10.0,
    "max_image_pixels": 40_000_000,
    "timeout": 30.0,
    "max_restarts": 5,
    "max_queue": 0,
    "api_key": "",
    "api_key_file": "",
    "log_level": "info",
}


def test_defaults_are_the_documented_values(clean_env: pytest.MonkeyPatch) -> None:
    """With no option and no environment variable set (the docs' table is the generated one: see above)."""
    assert vars(build_parser().parse_args([])) == DOCUMENTED_DEFAULTS


def test_model_specs(tmp_path: Path) -> None:
    assert parse_model_specs(["pretrained=models/a.onnx", "models/scratch.onnx", " "]) == [
        ("pretrained", "models/a.onnx"),
        ("scratch", "models/scratch.onnx"),
    ]
    odd = tmp_path / "epoch=1.onnx"
    odd.write_bytes(b"x")
    assert parse_model_specs([f"e1={odd}"]) == [("e1", str(odd))]
    with pytest.raises(CatDogError, match=r"'epoch=1' is not a valid model name.*NAME=PATH"):
        parse_model_specs([str(odd)])  # named after its file, and '=' cannot be in a URL name
    with pytest.raises(CatDogError, match="'my model' is not a valid model name"):
        parse_model_specs(["my model=models/a.onnx"])
    with pytest.raises(CatDogError, match="twice"):
        parse_model_specs(["a=x.onnx", "a=y.onnx"])
