"""ONNX export of a run's embedder with its preprocessing, verified against torch by onnxruntime.

The graph takes `images`, uint8 (B, C, S, S): raw pixels with the trained channel count C and side S,
and returns `embeddings`, float32 (B, D) unit rows. Inside it is everything `Embedder.forward` does
after resizing: pixels / 255, the trained mean and std, backbone, pooling, neck, L2 normalisation.
Resizing stays outside: torch's exporter has no ONNX operator for its antialiased bilinear resize, and
embedlab itself resizes with Pillow before the model (`embedlab.data.decoding`), so a deployment
resizes to S x S bilinearly first, as the model's metadata says. The batch axis is dynamic.

Verification: onnxruntime (CPU) embeds random uint8 batches of two sizes (which also checks the
dynamic batch axis); the largest absolute difference from torch's embeddings must not exceed the
tolerance (1e-4), otherwise ExportError is raised and no file is left at the output path.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch

from embedlab.index.manifest import CheckpointName
from embedlab.index.search import checkpoint_sha256
from embedlab.training.run_dir import load_run

DEFAULT_TOLERANCE = 1e-4
DEFAULT_OPSET = 17
#: Batch sizes of the verification inputs: two, so that a batch axis frozen at export time fails.
CHECK_BATCHES = (1, 3)


class ExportError(RuntimeError):
    """The exported graph does not reproduce the torch model within the tolerance."""


@dataclass(frozen=True)
class ExportReport:
    path: Path
    max_abs_diff: float
    channels: int
    image_size: int
    embedding_dim: int
    opset: int


def _export_graph(embedder: torch.nn.Module, example: torch.Tensor, path: Path, opset: int) -> None:
    with warnings.catch_warnings():
        # The preprocessing's shape checks become constants of the trace: channels and size are fixed
        # by the graph's input, which is what the tracer warns about. The TorchScript exporter is used
        # because the dynamo one needs onnxscript, which embedlab does not depend on.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*dynamo=False.*")
        torch.onnx.export(
            embedder,
            (example,),
            str(path),
            input_names=["images"],
            output_names=["embeddings"],
            dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )


def _add_metadata(path: Path, metadata: dict[str, str]) -> None:
    model = onnx.load(str(path))
    for key, value in metadata.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


@torch.inference_mode()
def max_abs_difference(
    embedder: torch.nn.Module, path: Path, channels: int, image_size: int, seed: int = 0
) -> float:
    """Largest |onnxruntime - torch| over embeddings of random uint8 batches (CHECK_BATCHES sizes)."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    largest = 0.0
    for batch in CHECK_BATCHES:
        images = torch.randint(0, 256, (batch, channels, image_size, image_size), generator=generator)
        images = images.to(torch.uint8)
        expected = embedder(images).float().numpy()
        (got,) = session.run(["embeddings"], {"images": images.numpy()})
        largest = max(largest, float(np.abs(got - expected).max()))
    return largest


def export_onnx(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    checkpoint: CheckpointName = "best",
    opset: int = DEFAULT_OPSET,
    tolerance: float = DEFAULT_TOLERANCE,
) -> ExportReport:
    """Export a run's embedder to ONNX (default RUN_DIR/model.onnx), verified as the module says."""
    run = load_run(run_dir, checkpoint)
    embedder = run.embedder.eval()
    channels, size = embedder.preprocess.channels, embedder.preprocess.size
    path = Path(out) if out is not None else run.run_dir / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Beside the target, so the final rename is atomic; made by a plain open, so the umask applies.
    temporary = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        example = torch.zeros((2, channels, size, size), dtype=torch.uint8)
        _export_graph(embedder, example, temporary, opset)
        _add_metadata(
            temporary,
            {
                "embedlab.input": f"uint8 (batch, {channels}, {size}, {size}) pixels, resized bilinearly",
                "embedlab.output": f"float32 (batch, {embedder.embedding_dim}) L2-normalised embeddings",
                "embedlab.checkpoint_sha256": checkpoint_sha256(run.checkpoint_path),
                "embedlab.backbone": run.config.model.backbone,
            },
        )
        difference = max_abs_difference(embedder, temporary, channels, size)
        if not difference <= tolerance:
            raise ExportError(
                f"onnxruntime's embeddings differ from torch's by up to {difference:.3g}, above the "
                f"tolerance {tolerance:g}; {path} was not written"
            )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return ExportReport(path, difference, channels, size, embedder.embedding_dim, opset)
