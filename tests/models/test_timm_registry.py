import subprocess
import sys
import types
import warnings

import pytest
import timm
from timm.models import model_entrypoint

from embedlab.models import small_cnn as small_cnn_module
from embedlab.models.timm_registry import register_backbone


def test_a_timm_name_cannot_be_taken() -> None:
    def resnet18(pretrained: bool = False) -> None:
        raise AssertionError("never built")

    timm_entry = model_entrypoint("resnet18")
    with pytest.raises(ValueError, match="timm already has a model named 'resnet18'"):
        register_backbone(resnet18)
    assert model_entrypoint("resnet18") is timm_entry


def test_the_same_entry_point_again_replaces_it_without_a_warning() -> None:
    original = small_cnn_module.small_cnn
    # what a re-import of the module makes: a new function object of the same module and name
    again = types.FunctionType(original.__code__, original.__globals__, original.__name__)
    again.__qualname__ = original.__qualname__
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            register_backbone(again)
        assert model_entrypoint("small_cnn") is again
        assert timm.create_model("small_cnn").num_features == 128
    finally:
        register_backbone(original)


def test_reimporting_embedlab_models_registers_again_quietly() -> None:
    script = (
        "import importlib, timm, embedlab.models.small_cnn as m; importlib.reload(m); "
        "print(timm.create_model('small_resnet').num_features)"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error::UserWarning", "-c", script],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "128"
